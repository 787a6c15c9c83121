package servicecache

import (
	"testing"

	"k8s.io/client-go/rest"
)

func TestUseProtobuf(t *testing.T) {
	in := &rest.Config{Host: "https://example.invalid"}
	out := UseProtobuf(in)
	if out.ContentType != "application/vnd.kubernetes.protobuf" ||
		out.AcceptContentTypes != "application/vnd.kubernetes.protobuf,application/json" {
		t.Errorf("content types %q / %q", out.ContentType, out.AcceptContentTypes)
	}
	if in.ContentType != "" || out.Host != in.Host {
		t.Errorf("input modified or host lost")
	}
	if _, err := NewClientset(out); err != nil {
		t.Errorf("NewClientset: %v", err)
	}
	if _, err := NewClientset(nil); err == nil {
		t.Errorf("nil config accepted")
	}
}
