package ipvs

import (
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// FakeLog records the operations of fakes as command lines (the same text
// as Op.String), so one log shared by a FakeIPVS and a FakeLinks shows the
// order of operations across both. Failed operations end in "# failed: ...".
type FakeLog struct {
	mu    sync.Mutex
	lines []string
}

// Lines returns the recorded operations.
func (l *FakeLog) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines)
}

// Reset forgets the recorded operations.
func (l *FakeLog) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = nil
}

func (l *FakeLog) record(cmd string, err error) {
	if err != nil {
		cmd += " # failed: " + err.Error()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, cmd)
}

// fakeFailures maps a command line to the error the fake returns for it.
type fakeFailures map[string]error

// Fake listing commands, for FailOn.
const (
	FakeListServicesCmd  = "ipvsadm -Sn"
	FakeListAddressesCmd = "ip addr show dev " + DummyLinkName
	FakeAddLinkCmd       = "ip link add " + DummyLinkName + " type dummy"
	FakeDeleteLinkCmd    = "ip link del " + DummyLinkName
)

// FakeListDestinationsCmd is the listing command of IPVS.Destinations for
// key, e.g. "ipvsadm -Ln -t 10.96.0.10:80", for FailOn.
func FakeListDestinationsCmd(key VSKey) string {
	return listDestinationsCmd(key)
}

// FakeIPVS is an in-memory IPVS table that behaves like the kernel's
// (adding an existing server fails with fs.ErrExist, changing a missing one
// with fs.ErrNotExist) and records every operation.
type FakeIPVS struct {
	mu       sync.Mutex
	log      *FakeLog
	services map[VSKey]*VirtualServer
	fail     fakeFailures
	// conns are the connection counts of destinations, set by
	// SetConnections and dropped with the destination.
	conns    map[VSKey]map[RSKey][2]int
	timeouts Timeouts
	// Listings are not logged (they change nothing): they are counted.
	serviceDumps, destDumps int
	// hidden are left out of the next listing (HideOnNextList).
	hidden map[VSKey]bool
}

var _ IPVS = (*FakeIPVS)(nil)

// NewFakeIPVS returns an empty table recording into log (a new one if nil).
func NewFakeIPVS(log *FakeLog) *FakeIPVS {
	if log == nil {
		log = &FakeLog{}
	}
	return &FakeIPVS{log: log, services: map[VSKey]*VirtualServer{}, fail: fakeFailures{},
		conns: map[VSKey]map[RSKey][2]int{}, timeouts: DefaultTimeouts}
}

// Log returns the log the fake records into.
func (f *FakeIPVS) Log() *FakeLog { return f.log }

// FailOn makes the operation with the given command line (as Op.String,
// FakeListServicesCmd, FakeListDestinationsCmd or SetTimeoutsCmd) fail with
// err; a nil err removes the failure.
func (f *FakeIPVS) FailOn(cmd string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	setFailure(f.fail, cmd, err)
}

// Put stores vs as is, without recording it: to set up a kernel that
// already holds servers (stale or another program's).
func (f *FakeIPVS) Put(vs *VirtualServer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.services[vs.Key] = kernelCopy(vs)
}

// SetConnections sets the connection counts the kernel reports for a
// destination (ActiveConn, InActConn), as traffic would. They are dropped
// with the destination or its service.
func (f *FakeIPVS) SetConnections(key VSKey, rs RSKey, active, inactive int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.conns[key]
	if m == nil {
		m = map[RSKey][2]int{}
		f.conns[key] = m
	}
	m[rs] = [2]int{active, inactive}
}

// Dumps counts the listings so far: full dumps (Services) and
// per-virtual-server destination dumps (Destinations).
func (f *FakeIPVS) Dumps() (services, destinations int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.serviceDumps, f.destDumps
}

// Timeouts returns the current timeouts (DefaultTimeouts at first).
func (f *FakeIPVS) Timeouts() Timeouts {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.timeouts
}

// Destinations returns copies of the destinations of key with their
// connection counts; a missing service has none, as for the kernel.
func (f *FakeIPVS) Destinations(key VSKey) ([]DestStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.destDumps++
	if err := f.fail[FakeListDestinationsCmd(key)]; err != nil {
		return nil, err
	}
	vs := f.services[key]
	if vs == nil {
		return nil, nil
	}
	out := make([]DestStats, 0, len(vs.RealServers))
	for _, rs := range vs.RealServers {
		c := f.conns[key][rs.Key]
		out = append(out, DestStats{RealServer: rs, ActiveConns: c[0], InactiveConns: c[1]})
	}
	return out, nil
}

// SetTimeouts records `ipvsadm --set TCP TCPFIN UDP` when it changes
// something (the kernel implementation writes nothing otherwise).
func (f *FakeIPVS) SetTimeouts(tcp, tcpFin, udp time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	next, err := f.timeouts.With(tcp, tcpFin, udp)
	if err != nil || next == f.timeouts {
		return err
	}
	cmd := SetTimeoutsCmd(tcp, tcpFin, udp)
	err = f.fail[cmd]
	if err == nil {
		f.timeouts = next
	}
	f.log.record(cmd, err)
	return err
}

// Services returns copies of the servers, sorted.
func (f *FakeIPVS) Services() ([]*VirtualServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.serviceDumps++
	if err := f.fail[FakeListServicesCmd]; err != nil {
		return nil, err
	}
	out := make([]*VirtualServer, 0, len(f.services))
	for _, vs := range f.services {
		if !f.hidden[vs.Key] {
			out = append(out, kernelCopy(vs))
		}
	}
	f.hidden = nil
	sortServices(out)
	return out, nil
}

// HideOnNextList leaves the given servers out of the next Services call
// only, as the kernel's dump does when servers of another network
// namespace change while it runs.
func (f *FakeIPVS) HideOnNextList(keys ...VSKey) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hidden = map[VSKey]bool{}
	for _, k := range keys {
		f.hidden[k] = true
	}
}

// AddService records `ipvsadm -A`.
func (f *FakeIPVS) AddService(vs *VirtualServer) error {
	return f.run(Op{Kind: OpAddService, VS: vs}, func() error {
		if f.services[vs.Key] != nil {
			return fs.ErrExist
		}
		c := kernelCopy(vs)
		c.RealServers = nil
		f.services[vs.Key] = c
		return nil
	})
}

// UpdateService records `ipvsadm -E`.
func (f *FakeIPVS) UpdateService(vs *VirtualServer) error {
	return f.run(Op{Kind: OpUpdateService, VS: vs}, func() error {
		old := f.services[vs.Key]
		if old == nil {
			return fs.ErrNotExist
		}
		c := kernelCopy(vs)
		c.RealServers = old.RealServers
		f.services[vs.Key] = c
		return nil
	})
}

// DeleteService records `ipvsadm -D`.
func (f *FakeIPVS) DeleteService(key VSKey) error {
	return f.run(Op{Kind: OpDeleteService, VS: &VirtualServer{Key: key}}, func() error {
		if f.services[key] == nil {
			return fs.ErrNotExist
		}
		delete(f.services, key)
		delete(f.conns, key)
		return nil
	})
}

// AddDestination records `ipvsadm -a`.
func (f *FakeIPVS) AddDestination(key VSKey, rs RealServer) error {
	return f.run(Op{Kind: OpAddDestination, VS: &VirtualServer{Key: key}, RS: rs}, func() error {
		vs := f.services[key]
		if vs == nil {
			return fs.ErrNotExist
		}
		i, found := slices.BinarySearchFunc(vs.RealServers, rs.Key, func(r RealServer, k RSKey) int { return r.Key.Compare(k) })
		if found {
			return fs.ErrExist
		}
		vs.RealServers = slices.Insert(vs.RealServers, i, rs)
		return nil
	})
}

// UpdateDestination records `ipvsadm -e`.
func (f *FakeIPVS) UpdateDestination(key VSKey, rs RealServer) error {
	return f.run(Op{Kind: OpUpdateDestination, VS: &VirtualServer{Key: key}, RS: rs}, func() error {
		i, err := f.findDest(key, rs.Key)
		if err == nil {
			f.services[key].RealServers[i] = rs
		}
		return err
	})
}

// DeleteDestination records `ipvsadm -d`.
func (f *FakeIPVS) DeleteDestination(key VSKey, rk RSKey) error {
	return f.run(Op{Kind: OpDeleteDestination, VS: &VirtualServer{Key: key}, RS: RealServer{Key: rk}}, func() error {
		i, err := f.findDest(key, rk)
		if err == nil {
			vs := f.services[key]
			vs.RealServers = slices.Delete(vs.RealServers, i, i+1)
			delete(f.conns[key], rk)
		}
		return err
	})
}

func (f *FakeIPVS) findDest(key VSKey, rk RSKey) (int, error) {
	vs := f.services[key]
	if vs == nil {
		return 0, fs.ErrNotExist
	}
	i, found := slices.BinarySearchFunc(vs.RealServers, rk, func(r RealServer, k RSKey) int { return r.Key.Compare(k) })
	if !found {
		return 0, fs.ErrNotExist
	}
	return i, nil
}

// run records op and applies change unless a failure is injected for it.
func (f *FakeIPVS) run(op Op, change func() error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	cmd := op.String()
	err := f.fail[cmd]
	if err == nil {
		err = change()
	}
	f.log.record(cmd, err)
	return err
}

// kernelCopy keeps only what the kernel stores: planner fields are
// dropped, destinations are copied (the fake changes them in place).
func kernelCopy(vs *VirtualServer) *VirtualServer {
	return &VirtualServer{
		Key:         vs.Key,
		Scheduler:   vs.Scheduler,
		Flags:       vs.Flags &^ FlagHashed,
		Timeout:     vs.Timeout,
		RealServers: slices.Clone(vs.RealServers),
	}
}

func setFailure(m fakeFailures, cmd string, err error) {
	if err == nil {
		delete(m, cmd)
		return
	}
	m[cmd] = err
}

// FakeLinks is an in-memory dummy link, missing until EnsureLink or
// SetAddresses, that records every change.
type FakeLinks struct {
	mu     sync.Mutex
	log    *FakeLog
	exists bool
	addrs  map[netip.Addr]struct{}
	fail   fakeFailures
}

var _ Links = (*FakeLinks)(nil)

// NewFakeLinks returns a missing link recording into log (a new one if
// nil).
func NewFakeLinks(log *FakeLog) *FakeLinks {
	if log == nil {
		log = &FakeLog{}
	}
	return &FakeLinks{log: log, addrs: map[netip.Addr]struct{}{}, fail: fakeFailures{}}
}

// Log returns the log the fake records into.
func (f *FakeLinks) Log() *FakeLog { return f.log }

// FailOn makes the operation with the given command line (as Op.String,
// FakeListAddressesCmd, FakeAddLinkCmd or FakeDeleteLinkCmd) fail with err;
// nil removes it.
func (f *FakeLinks) FailOn(cmd string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	setFailure(f.fail, cmd, err)
}

// SetAddresses creates the link with exactly addrs, without recording it.
func (f *FakeLinks) SetAddresses(addrs ...netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exists = true
	f.addrs = map[netip.Addr]struct{}{}
	for _, a := range addrs {
		f.addrs[a] = struct{}{}
	}
}

// Exists reports whether the link was created.
func (f *FakeLinks) Exists() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.exists
}

// EnsureLink records `ip link add` when the link is missing.
func (f *FakeLinks) EnsureLink() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.exists {
		return nil
	}
	err := f.fail[FakeAddLinkCmd]
	if err == nil {
		f.exists = true
	}
	f.log.record(FakeAddLinkCmd, err)
	return err
}

// DeleteLink records `ip link del` when the link exists; its addresses go
// with it.
func (f *FakeLinks) DeleteLink() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.exists {
		return nil
	}
	err := f.fail[FakeDeleteLinkCmd]
	if err == nil {
		f.exists = false
		f.addrs = map[netip.Addr]struct{}{}
	}
	f.log.record(FakeDeleteLinkCmd, err)
	return err
}

// Addresses lists the bound addresses, sorted.
func (f *FakeLinks) Addresses() ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail[FakeListAddressesCmd]; err != nil {
		return nil, err
	}
	if !f.exists {
		return nil, errNoLink
	}
	out := make([]netip.Addr, 0, len(f.addrs))
	for a := range f.addrs {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// AddAddress records `ip addr add`; an address already bound is fine.
func (f *FakeLinks) AddAddress(addr netip.Addr) error {
	return f.run(Op{Kind: OpAddAddress, Addr: addr}, func() { f.addrs[addr] = struct{}{} })
}

// DeleteAddress records `ip addr del`; an address not bound is fine.
func (f *FakeLinks) DeleteAddress(addr netip.Addr) error {
	return f.run(Op{Kind: OpDeleteAddress, Addr: addr}, func() { delete(f.addrs, addr) })
}

var errNoLink = fmt.Errorf("link %s: %w", DummyLinkName, fs.ErrNotExist)

func (f *FakeLinks) run(op Op, change func()) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	cmd := op.String()
	err := f.fail[cmd]
	if err == nil && !f.exists {
		err = errNoLink
	}
	if err == nil {
		change()
	}
	f.log.record(cmd, err)
	return err
}
