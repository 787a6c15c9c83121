package app

import (
	"errors"
	"strings"
	"testing"
)

func TestNodeName(t *testing.T) {
	host := func(name string, err error) func() (string, error) {
		return func() (string, error) { return name, err }
	}
	tests := []struct {
		name     string
		override string
		env      string
		hostname func() (string, error)
		want     string
		wantErr  string
	}{
		{name: "override wins", override: "Node-A", env: "node-b", hostname: host("node-c", nil), want: "node-a"},
		{name: "override trimmed", override: " node-a\n", hostname: host("x", nil), want: "node-a"},
		{name: "blank override", override: "  ", env: "node-b", hostname: host("x", nil), wantErr: "--hostname-override"},
		{name: "env next", env: "NODE-B", hostname: host("node-c", nil), want: "node-b"},
		{name: "blank env ignored", env: " ", hostname: host("Node-C", nil), want: "node-c"},
		{name: "hostname last", hostname: host("Node-C.Example.Com", nil), want: "node-c.example.com"},
		{name: "hostname error", hostname: host("", errors.New("uts namespace gone")), wantErr: "uts namespace gone"},
		{name: "empty hostname", hostname: host("", nil), wantErr: "hostname is empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := nodeName(tc.override, tc.env, tc.hostname)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("nodeName = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestOptionsNodeName(t *testing.T) {
	t.Setenv(NodeNameEnv, "From-Env")
	if got, err := (&Options{}).NodeName(); err != nil || got != "from-env" {
		t.Errorf("NodeName = %q, %v; want from-env", got, err)
	}
	if got, err := (&Options{HostnameOverride: "Flag"}).NodeName(); err != nil || got != "flag" {
		t.Errorf("NodeName = %q, %v; want flag", got, err)
	}
}
