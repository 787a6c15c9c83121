package servicecache

import (
	"errors"
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// UseProtobuf returns a copy of cfg that talks protobuf to the API server
// (JSON is still accepted for resources without protobuf support). Lists
// and watches of Services and EndpointSlices are much cheaper to decode.
func UseProtobuf(cfg *rest.Config) *rest.Config {
	out := rest.CopyConfig(cfg)
	out.ContentType = runtime.ContentTypeProtobuf
	out.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	return out
}

// NewClientset builds the clientset to pass to New, using protobuf.
func NewClientset(cfg *rest.Config) (kubernetes.Interface, error) {
	if cfg == nil {
		return nil, errors.New("servicecache: nil rest config")
	}
	cs, err := kubernetes.NewForConfig(UseProtobuf(cfg))
	if err != nil {
		return nil, fmt.Errorf("servicecache: clientset: %w", err)
	}
	return cs, nil
}
