//go:build !linux

package ipvs

import (
	"errors"
	"net/netip"
	"time"
)

// errNotLinux is returned by the kernel implementations off Linux, where
// only the pure parts and the fakes are usable.
var errNotLinux = errors.New("IPVS needs Linux")

// KernelIPVS is unavailable off Linux.
type KernelIPVS struct{}

// NewKernelIPVS always fails off Linux.
func NewKernelIPVS() (*KernelIPVS, error) { return nil, errNotLinux }

// Close does nothing.
func (k *KernelIPVS) Close() {}

func (k *KernelIPVS) Services() ([]*VirtualServer, error)       { return nil, errNotLinux }
func (k *KernelIPVS) AddService(*VirtualServer) error           { return errNotLinux }
func (k *KernelIPVS) UpdateService(*VirtualServer) error        { return errNotLinux }
func (k *KernelIPVS) DeleteService(VSKey) error                 { return errNotLinux }
func (k *KernelIPVS) AddDestination(VSKey, RealServer) error    { return errNotLinux }
func (k *KernelIPVS) UpdateDestination(VSKey, RealServer) error { return errNotLinux }
func (k *KernelIPVS) DeleteDestination(VSKey, RSKey) error      { return errNotLinux }
func (k *KernelIPVS) Destinations(VSKey) ([]DestStats, error)   { return nil, errNotLinux }
func (k *KernelIPVS) SetTimeouts(_, _, _ time.Duration) error   { return errNotLinux }
func (k *KernelIPVS) Timeouts() (Timeouts, error)               { return Timeouts{}, errNotLinux }
func (k *KernelIPVS) ProbeScheduler(string) error               { return errNotLinux }

// KernelLinks is unavailable off Linux.
type KernelLinks struct{}

// NewKernelLinks returns links whose methods fail off Linux.
func NewKernelLinks(string) *KernelLinks { return &KernelLinks{} }

func (l *KernelLinks) EnsureLink() error                { return errNotLinux }
func (l *KernelLinks) Addresses() ([]netip.Addr, error) { return nil, errNotLinux }
func (l *KernelLinks) AddAddress(netip.Addr) error      { return errNotLinux }
func (l *KernelLinks) DeleteAddress(netip.Addr) error   { return errNotLinux }
func (l *KernelLinks) DeleteLink() error                { return errNotLinux }
