package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/bench/probe"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/agent"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// event is a probe event stamped with the host's time of arrival.
type event struct {
	probe.Event
	At time.Time
}

// lineWriter splits a stream into JSON events.
type lineWriter struct {
	mu   sync.Mutex
	buf  []byte
	out  chan<- event
	junk bytes.Buffer
}

func (w *lineWriter) Write(p []byte) (int, error) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		line := w.buf[:i]
		var ev probe.Event
		if err := json.Unmarshal(line, &ev); err != nil {
			w.junk.Write(line)
			w.junk.WriteByte('\n')
		} else {
			w.out <- event{Event: ev, At: now}
		}
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// stream runs `labbench cmd` in netns with spec on stdin; its events arrive
// on the returned channel, closed when the command ends; wait then returns
// how it ended.
func stream(ctx context.Context, ag *agent.Client, netns, cmd string, spec any, timeout time.Duration) (<-chan event, func() error, error) {
	in, err := json.Marshal(spec)
	if err != nil {
		return nil, nil, err
	}
	ch := make(chan event, 1<<16)
	lw := &lineWriter{out: ch}
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		code, err := ag.Exec(ctx, agent.ExecRequest{
			Netns: netns, Argv: []string{labctl.GuestBin("labbench"), cmd}, Stdin: in,
			TimeoutSeconds: int(timeout.Seconds()) + 60,
		}, lw, &stderr)
		close(ch)
		switch {
		case err != nil:
			done <- err
		case code != 0:
			done <- fmt.Errorf("labbench %s exited %d: %s %s", cmd, code, strings.TrimSpace(stderr.String()), strings.TrimSpace(lw.junk.String()))
		default:
			done <- nil
		}
	}()
	return ch, func() error { return <-done }, nil
}

// call runs `labbench cmd` and decodes its result into out.
func call(ctx context.Context, ag *agent.Client, netns, cmd string, spec, out any, timeout time.Duration) error {
	ch, wait, err := stream(ctx, ag, netns, cmd, spec, timeout)
	if err != nil {
		return err
	}
	var result, failure *probe.Event
	for ev := range ch {
		switch ev.Ev {
		case "result":
			result = &ev.Event
		case "error":
			failure = &ev.Event
		}
	}
	werr := wait()
	if failure != nil {
		return fmt.Errorf("labbench %s: %s", cmd, failure.Msg)
	}
	if werr != nil {
		return werr
	}
	if result == nil {
		return fmt.Errorf("labbench %s: no result", cmd)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(result.Result, out)
}
