package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const kubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://kubeconfig.example:6443
    insecure-skip-tls-verify: true
users:
- name: u
  user:
    token: secret
contexts:
- name: ctx
  context:
    cluster: c
    user: u
current-context: ctx
`

func TestRESTConfig(t *testing.T) {
	// Never pick up the real in-cluster config when tests run in a pod.
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")

	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		mod        func(*Options)
		wantHost   string
		wantAccept string
		wantType   string
		wantQPS    float32
		wantBurst  int
		wantErr    string
	}{
		{
			name:     "kubeconfig",
			mod:      func(o *Options) { o.Kubeconfig = path },
			wantHost: "https://kubeconfig.example:6443", wantType: ContentTypeProtobuf,
			wantAccept: "application/vnd.kubernetes.protobuf,application/json", wantQPS: 5, wantBurst: 10,
		},
		{
			name:     "master overrides kubeconfig",
			mod:      func(o *Options) { o.Kubeconfig, o.Master = path, "https://master.example:443" },
			wantHost: "https://master.example:443", wantType: ContentTypeProtobuf,
			wantAccept: "application/vnd.kubernetes.protobuf,application/json", wantQPS: 5, wantBurst: 10,
		},
		{
			name:     "master alone",
			mod:      func(o *Options) { o.Master = "http://127.0.0.1:8080" },
			wantHost: "http://127.0.0.1:8080", wantType: ContentTypeProtobuf,
			wantAccept: "application/vnd.kubernetes.protobuf,application/json", wantQPS: 5, wantBurst: 10,
		},
		{
			name: "json and custom limits",
			mod: func(o *Options) {
				o.Kubeconfig, o.KubeAPIContentType, o.KubeAPIQPS, o.KubeAPIBurst = path, ContentTypeJSON, 50, 100
			},
			wantHost: "https://kubeconfig.example:6443", wantType: ContentTypeJSON,
			wantAccept: ContentTypeJSON, wantQPS: 50, wantBurst: 100,
		},
		{
			name:    "missing kubeconfig",
			mod:     func(o *Options) { o.Kubeconfig = filepath.Join(t.TempDir(), "absent") },
			wantErr: "--kubeconfig=",
		},
		{
			name:    "not in a cluster",
			mod:     func(*Options) {},
			wantErr: "set --kubeconfig or --master",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := NewOptions()
			tc.mod(o)
			cfg, err := o.RESTConfig()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Host != tc.wantHost {
				t.Errorf("Host = %q, want %q", cfg.Host, tc.wantHost)
			}
			if cfg.ContentType != tc.wantType || cfg.AcceptContentTypes != tc.wantAccept {
				t.Errorf("content types = %q / %q, want %q / %q", cfg.ContentType, cfg.AcceptContentTypes, tc.wantType, tc.wantAccept)
			}
			if cfg.QPS != tc.wantQPS || cfg.Burst != tc.wantBurst {
				t.Errorf("QPS/Burst = %v/%d, want %v/%d", cfg.QPS, cfg.Burst, tc.wantQPS, tc.wantBurst)
			}
		})
	}
}
