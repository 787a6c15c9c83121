//go:build !linux

package conntrack

import "errors"

// New returns a Cleaner that fails: conntrack is Linux only.
func New() Cleaner { return unsupported{} }

type unsupported struct{}

func (unsupported) DeleteStale(filters []Filter) (int, error) {
	if len(filters) == 0 {
		return 0, nil
	}
	return 0, errors.New("conntrack cleanup is only supported on Linux")
}
