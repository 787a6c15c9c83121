package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Client talks to an agent at a base URL such as http://127.0.0.1:17000.
type Client struct {
	Base string
	HTTP *http.Client
}

// NewClient returns a client for the agent at base.
func NewClient(base string) *Client {
	return &Client{Base: strings.TrimRight(base, "/"), HTTP: &http.Client{}}
}

func (c *Client) post(ctx context.Context, path string, body any) (*http.Response, error) {
	buf, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.Base+path, bytes.NewReader(buf))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("agent %s: %s: %s", path, resp.Status, strings.TrimSpace(string(msg)))
	}
	return resp, nil
}

// Healthy reports whether the agent answers.
func (c *Client) Healthy(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.Base+"/healthz", nil)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Exec runs a command and streams its output to stdout and stderr (either
// may be nil). It returns the exit code; err is for transport failures only.
func (c *Client) Exec(ctx context.Context, req ExecRequest, stdout, stderr io.Writer) (int, error) {
	resp, err := c.post(ctx, "/exec", req)
	if err != nil {
		return -1, err
	}
	defer resp.Body.Close()
	for {
		kind, payload, err := readFrame(resp.Body)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return -1, fmt.Errorf("agent closed the stream of %q before its exit status", req.Argv)
			}
			return -1, err
		}
		switch kind {
		case frameStdout:
			if stdout != nil {
				stdout.Write(payload)
			}
		case frameStderr:
			if stderr != nil {
				stderr.Write(payload)
			}
		case frameExit:
			return strconv.Atoi(string(payload))
		}
	}
}

// Output runs a command and returns its stdout; a non-zero exit is an error
// that carries stderr.
func (c *Client) Output(ctx context.Context, req ExecRequest) (string, error) {
	var out, errb bytes.Buffer
	code, err := c.Exec(ctx, req, &out, &errb)
	if err != nil {
		return out.String(), err
	}
	if code != 0 {
		return out.String(), fmt.Errorf("%q in netns %q exited %d: %s", req.Argv, req.Netns, code, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// StartDaemon starts a supervised process.
func (c *Client) StartDaemon(ctx context.Context, spec DaemonSpec) (DaemonStatus, error) {
	return c.daemonCall(ctx, "/daemon/start", spec)
}

// StopDaemon stops a daemon: the signal (default TERM), then KILL after the timeout.
func (c *Client) StopDaemon(ctx context.Context, req SignalRequest) (DaemonStatus, error) {
	return c.daemonCall(ctx, "/daemon/stop", req)
}

// SignalDaemon sends one signal to a daemon's main process.
func (c *Client) SignalDaemon(ctx context.Context, req SignalRequest) (DaemonStatus, error) {
	return c.daemonCall(ctx, "/daemon/signal", req)
}

func (c *Client) daemonCall(ctx context.Context, path string, body any) (DaemonStatus, error) {
	var st DaemonStatus
	resp, err := c.post(ctx, path, body)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// Daemons lists every daemon the agent started.
func (c *Client) Daemons(ctx context.Context) ([]DaemonStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Base+"/daemons", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var list []DaemonStatus
	return list, json.NewDecoder(resp.Body).Decode(&list)
}
