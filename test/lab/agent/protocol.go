// Package agent is the lab's guest agent and its client: the host runs
// commands in the VM (in its root network namespace or in a node's) and
// streams their output back, and starts, signals and stops long-running
// processes (proxies, kubelets) whose logs stay in the VM.
//
// The protocol is HTTP with JSON requests. /exec answers with a stream of
// frames: one kind byte ('o' stdout, 'e' stderr, 'x' exit status), a 4-byte
// big-endian length, then the payload.
package agent

import (
	"encoding/binary"
	"fmt"
	"io"
)

// ExecRequest runs one command to completion.
type ExecRequest struct {
	// Netns is a named network namespace (ip netns); empty means the VM's root.
	Netns string   `json:"netns,omitempty"`
	Argv  []string `json:"argv"`
	Env   []string `json:"env,omitempty"`
	Stdin []byte   `json:"stdin,omitempty"`
	// TimeoutSeconds bounds the command; 0 means the agent's default (10 min).
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
}

// DaemonSpec describes a long-running process supervised by the agent. Its
// output goes to /var/log/lab/<Name>.log in the VM.
type DaemonSpec struct {
	Name  string   `json:"name"`
	Netns string   `json:"netns,omitempty"`
	Argv  []string `json:"argv"`
	Env   []string `json:"env,omitempty"`
}

// DaemonStatus is one supervised process as the agent sees it.
type DaemonStatus struct {
	DaemonSpec
	Pid     int    `json:"pid"`
	Running bool   `json:"running"`
	Exit    string `json:"exit,omitempty"`
	LogPath string `json:"logPath"`
}

// SignalRequest targets a daemon by name.
type SignalRequest struct {
	Name string `json:"name"`
	// Signal is a signal number; for stop, the first signal sent (default TERM).
	Signal int `json:"signal,omitempty"`
	// TimeoutSeconds for stop: how long to wait before SIGKILL (default 10).
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
}

const (
	frameStdout = 'o'
	frameStderr = 'e'
	frameExit   = 'x'
)

func writeFrame(w io.Writer, kind byte, payload []byte) error {
	var hdr [5]byte
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > 64<<20 {
		return 0, nil, fmt.Errorf("agent frame too large: %d bytes", n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, err
	}
	return hdr[0], buf, nil
}
