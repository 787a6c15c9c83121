package iptables

import (
	"cmp"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Family is an IP family. Each family has its own ipsets (IPv6 ones are
// named KUBE-6-...) and its own tables (iptables / ip6tables).
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return "Family(" + strconv.Itoa(int(f)) + ")"
}

// Has reports whether a belongs to the family. IPv4-mapped IPv6 addresses
// belong to neither: the kernel would treat them inconsistently.
func (f Family) Has(a netip.Addr) bool {
	switch f {
	case IPv4:
		return a.Is4()
	case IPv6:
		return a.Is6() && !a.Is4In6()
	}
	return false
}

// HasPrefix reports whether p is a valid prefix of the family.
func (f Family) HasPrefix(p netip.Prefix) bool { return p.IsValid() && f.Has(p.Addr()) }

// ipsetFamily is the name `ipset create ... family X` uses.
func (f Family) ipsetFamily() string {
	if f == IPv6 {
		return "inet6"
	}
	return "inet"
}

// Proto is an IP protocol number as ipset stores it.
type Proto uint8

const (
	ProtoTCP  Proto = 6
	ProtoUDP  Proto = 17
	ProtoSCTP Proto = 132
)

func (p Proto) String() string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoSCTP:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

// parseProto maps a Kubernetes protocol name ("TCP") to a Proto.
func parseProto(s string) (Proto, bool) {
	switch strings.ToUpper(s) {
	case "TCP":
		return ProtoTCP, true
	case "UDP":
		return ProtoUDP, true
	case "SCTP":
		return ProtoSCTP, true
	}
	return 0, false
}

// SetType is an ipset type name, as `ipset create` takes it.
type SetType string

const (
	HashIP        SetType = "hash:ip"
	HashIPPort    SetType = "hash:ip,port"
	HashIPPortIP  SetType = "hash:ip,port,ip"
	HashIPPortNet SetType = "hash:ip,port,net"
	BitmapPort    SetType = "bitmap:port"
)

// Entry is one member of an ipset. Which fields are set depends on the set
// type; the zero values of the others keep Entry comparable, so it serves as
// a map key:
//
//	hash:ip           IP
//	hash:ip,port      IP, Proto, Port
//	hash:ip,port,ip   IP, Proto, Port, IP2
//	hash:ip,port,net  IP, Proto, Port, Net
//	bitmap:port       Port
//
// SkbMark and SkbMarkMask are the skbmark extension of a set created with
// skbinfo (SetSpec.SkbInfo): not part of the kernel's key, but of what
// `ipset save` shows and of what the SET target's --map-mark applies.
type Entry struct {
	IP    netip.Addr
	Proto Proto
	Port  uint16
	IP2   netip.Addr
	Net   netip.Prefix

	SkbMark, SkbMarkMask uint32
}

// key is the entry without its extensions: what the kernel looks it up by.
func (e Entry) key() Entry {
	e.SkbMark, e.SkbMarkMask = 0, 0
	return e
}

// String renders the entry as `ipset save` prints it, e.g.
// "10.96.0.10,tcp:80", "10.0.0.5,tcp:8080,10.0.0.5" or "30080".
func (e Entry) String() string {
	if !e.IP.IsValid() {
		return strconv.Itoa(int(e.Port))
	}
	if e.Proto == 0 && e.Port == 0 {
		return e.IP.String()
	}
	s := e.IP.String() + "," + e.Proto.String() + ":" + strconv.Itoa(int(e.Port))
	switch {
	case e.IP2.IsValid():
		s += "," + e.IP2.String()
	case e.Net.IsValid():
		s += "," + e.Net.String()
	}
	if e.SkbMark != 0 || e.SkbMarkMask != 0 {
		s += " skbmark 0x" + strconv.FormatUint(uint64(e.SkbMark), 16)
		if e.SkbMarkMask != 0xffffffff {
			s += "/0x" + strconv.FormatUint(uint64(e.SkbMarkMask), 16)
		}
	}
	return s
}

// compareEntries orders entries for stable dumps and op logs.
func compareEntries(a, b Entry) int {
	if c := a.IP.Compare(b.IP); c != 0 {
		return c
	}
	if a.Proto != b.Proto {
		return int(a.Proto) - int(b.Proto)
	}
	if a.Port != b.Port {
		return int(a.Port) - int(b.Port)
	}
	if c := a.IP2.Compare(b.IP2); c != 0 {
		return c
	}
	if c := a.Net.Addr().Compare(b.Net.Addr()); c != 0 {
		return c
	}
	if c := a.Net.Bits() - b.Net.Bits(); c != 0 {
		return c
	}
	if c := cmp.Compare(a.SkbMark, b.SkbMark); c != 0 {
		return c
	}
	return cmp.Compare(a.SkbMarkMask, b.SkbMarkMask)
}

// SetSpec describes one ipset: what `ipset create` needs, plus the comment
// upstream puts on the iptables rules that match the set.
type SetSpec struct {
	Name    string
	Type    SetType
	Family  Family // unused by bitmap:port, which has no family
	Comment string
	// MaxElem for hash types (upstream: 65536). The hash size is the
	// kernel's default, 1024, which is also upstream's value.
	MaxElem uint32
	// PortFrom/PortTo for bitmap:port (upstream: 0-65535).
	PortFrom, PortTo uint16
	// SkbInfo: the set is created with the skbinfo extension, and its
	// hash:ip,port entries carry an skbmark (ipset create ... skbinfo).
	SkbInfo bool
}

// CreateArgs renders the `ipset create` command line equivalent.
func (s SetSpec) CreateArgs() string {
	if s.Type == BitmapPort {
		return fmt.Sprintf("create %s %s range %d-%d", s.Name, s.Type, s.PortFrom, s.PortTo)
	}
	args := fmt.Sprintf("create %s %s family %s hashsize 1024 maxelem %d", s.Name, s.Type, s.Family.ipsetFamily(), s.MaxElem)
	if s.SkbInfo {
		args += " skbinfo"
	}
	return args
}

// Validate checks that e fits the set: right fields for the type, right
// family, usable values. The planner only produces valid entries; the
// implementations check again so bad input never reaches the kernel.
func (s SetSpec) Validate(e Entry) error {
	bad := func(why string) error {
		return fmt.Errorf("entry %q does not fit %s (%s): %s", e.String(), s.Name, s.Type, why)
	}
	needIP := func() error {
		if !s.Family.Has(e.IP) {
			return bad("address is not " + s.Family.String())
		}
		return nil
	}
	needPort := func() error {
		if e.Proto != ProtoTCP && e.Proto != ProtoUDP && e.Proto != ProtoSCTP {
			return bad("protocol must be tcp, udp or sctp")
		}
		return nil
	}
	if (e.SkbMark != 0 || e.SkbMarkMask != 0) && (!s.SkbInfo || s.Type != HashIPPort || e.SkbMarkMask == 0) {
		return bad("an skbmark needs a hash:ip,port set with skbinfo, and a mask")
	}
	switch s.Type {
	case HashIP:
		if e.Proto != 0 || e.Port != 0 || e.IP2.IsValid() || e.Net.IsValid() {
			return bad("only an address is allowed")
		}
		return needIP()
	case HashIPPort:
		if e.IP2.IsValid() || e.Net.IsValid() {
			return bad("no second address allowed")
		}
		if err := needIP(); err != nil {
			return err
		}
		return needPort()
	case HashIPPortIP:
		if e.Net.IsValid() || !s.Family.Has(e.IP2) {
			return bad("needs a second address of the family")
		}
		if err := needIP(); err != nil {
			return err
		}
		return needPort()
	case HashIPPortNet:
		if e.IP2.IsValid() || !s.Family.HasPrefix(e.Net) || e.Net.Bits() == 0 || e.Net != e.Net.Masked() {
			return bad("needs a masked, non-zero network of the family")
		}
		if err := needIP(); err != nil {
			return err
		}
		return needPort()
	case BitmapPort:
		if e.IP.IsValid() || e.Proto != 0 || e.IP2.IsValid() || e.Net.IsValid() {
			return bad("only a port is allowed")
		}
		if e.Port < s.PortFrom || e.Port > s.PortTo {
			return bad("port out of range")
		}
		return nil
	}
	return bad("unknown set type")
}

// Table is an iptables table.
type Table string

const (
	TableNAT    Table = "nat"
	TableFilter Table = "filter"
	TableMangle Table = "mangle"
)

// ourTables are the tables holding chains of ours, in dump order.
var ourTables = []Table{TableNAT, TableFilter, TableMangle}

// Rule is one iptables rule: the arguments that follow "-A CHAIN", in the
// canonical form and order iptables-save prints them (so that what we read
// back compares equal to what we wrote), e.g.
// {"-m", "mark", "!", "--mark", "0x4000/0x4000", "-j", "RETURN"}.
type Rule []string

// Chain is the full desired content of one of our chains.
type Chain struct {
	Table Table
	Name  string
	Rules []Rule
}

// Jump is a rule in a built-in chain that sends traffic to one of ours.
type Jump struct {
	Table   Table
	From    string // built-in chain, e.g. PREROUTING
	To      string // our chain, e.g. KUBE-SERVICES
	Comment string
}

// Rule is the jump's rule spec, as upstream writes it.
func (j Jump) Rule() Rule {
	return Rule{"-m", "comment", "--comment", j.Comment, "-j", j.To}
}
