package nldump

import (
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const (
	testSeq = 42
	testPid = 1234
	testTyp = unix.RTM_NEWADDR
)

// nlmsg is one netlink message, padded to 4 bytes.
func nlmsg(typ, flags uint16, seq, pid uint32, payload ...byte) []byte {
	b := binary.NativeEndian.AppendUint32(nil, uint32(unix.NLMSG_HDRLEN+len(payload)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, pid)
	b = append(b, payload...)
	for len(b)%unix.NLMSG_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

// part is a message of the dump under test.
func part(payload ...byte) []byte {
	return nlmsg(testTyp, unix.NLM_F_MULTI, testSeq, testPid, payload...)
}

func errno(e int32) []byte { return binary.NativeEndian.AppendUint32(nil, uint32(e)) }

func done(e int32) []byte {
	return nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI, testSeq, testPid, errno(e)...)
}

func nlerr(e int32) []byte { return nlmsg(unix.NLMSG_ERROR, 0, testSeq, testPid, errno(-e)...) }

func cat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

func TestWalker(t *testing.T) {
	extAck := cat(
		errno(-int32(unix.EINVAL)),
		nlmsg(testTyp, 0, testSeq, 0, 1, 2, 3, 4), // the echoed request
		[]byte{10, 0, unix.NLMSGERR_ATTR_MSG, 0, 'b', 'a', 'd', 0, 0, 0, 0, 0},
	)
	fnFail := errors.New("bad message")
	for _, tc := range []struct {
		name      string
		resType   uint16
		datagrams [][]byte
		failOn    byte   // fn fails on the payload starting with it
		want      []byte // first byte of each payload passed to fn
		unread    int    // datagrams left unread after the answer ended
		wantErr   string // "" : the answer completes without error
		is        error  // and the error is this one
	}{
		{name: "one datagram", datagrams: [][]byte{cat(part(1), part(2), done(0))}, want: []byte{1, 2}},
		{name: "done without payload", datagrams: [][]byte{cat(part(1), nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI, testSeq, testPid))}, want: []byte{1}},
		{name: "several datagrams", datagrams: [][]byte{cat(part(1), part(2)), part(3), done(0)}, want: []byte{1, 2, 3}},
		{name: "the answer ends before later datagrams",
			datagrams: [][]byte{cat(part(1), done(0)), part(9)}, want: []byte{1}, unread: 1},
		{name: "a message without NLM_F_MULTI is the answer",
			datagrams: [][]byte{cat(nlmsg(testTyp, 0, testSeq, testPid, 1), part(2))}, want: []byte{1}},
		{name: "an ACK", datagrams: [][]byte{nlerr(0)}},
		{name: "other requests and sockets skipped",
			datagrams: [][]byte{cat(nlmsg(testTyp, unix.NLM_F_MULTI, testSeq-1, testPid, 8), part(1),
				nlmsg(testTyp, unix.NLM_F_MULTI, testSeq, testPid+1, 9), nlmsg(unix.NLMSG_DONE, 0, testSeq-1, testPid), done(0))},
			want: []byte{1}},
		{name: "other message types skipped", resType: testTyp,
			datagrams: [][]byte{cat(nlmsg(testTyp+1, unix.NLM_F_MULTI, testSeq, testPid, 9), part(1), done(0))}, want: []byte{1}},
		{name: "every type without resType",
			datagrams: [][]byte{cat(nlmsg(testTyp+1, unix.NLM_F_MULTI, testSeq, testPid, 9), part(1), done(0))}, want: []byte{9, 1}},
		{name: "kernel error", datagrams: [][]byte{cat(part(1), nlerr(int32(unix.ENOENT)))}, want: []byte{1},
			wantErr: "no such file", is: unix.ENOENT},
		{name: "error in NLMSG_DONE", datagrams: [][]byte{done(-int32(unix.EBUSY))}, wantErr: "busy", is: unix.EBUSY},
		{name: "extended ACK message",
			datagrams: [][]byte{nlmsg(unix.NLMSG_ERROR, unix.NLM_F_ACK_TLVS, testSeq, testPid, extAck...)},
			wantErr:   "invalid argument: bad", is: unix.EINVAL},
		{name: "short error code", datagrams: [][]byte{nlmsg(unix.NLMSG_ERROR, 0, testSeq, testPid, 1, 2)},
			wantErr: "short of an error code"},
		{name: "dump interrupted", datagrams: [][]byte{cat(part(1), nlmsg(testTyp, unix.NLM_F_MULTI|unix.NLM_F_DUMP_INTR, testSeq, testPid, 2)), done(0)},
			want: []byte{1, 2}, wantErr: "inconsistent", is: ErrDumpInterrupted},
		{name: "fn's error, the rest drained", failOn: 2,
			datagrams: [][]byte{cat(part(1), part(2), part(3)), cat(part(4), done(0))},
			want:      []byte{1, 2}, wantErr: "bad message", is: fnFail},
		{name: "message length below the header", datagrams: [][]byte{cat(part(1), []byte{15, 0, 0, 0}, make([]byte, 12))},
			want: []byte{1}, wantErr: "bad netlink message length 15", is: unix.EINVAL},
		{name: "message length past the datagram", datagrams: [][]byte{cat(part(1), part(2, 2, 2, 2)[:19])},
			want: []byte{1}, wantErr: "bad netlink message length 20", is: unix.EINVAL},
		{name: "last message without its padding", datagrams: [][]byte{cat(part(1), part(2, 2, 2, 2, 2)[:21]), done(0)},
			want: []byte{1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []byte
			w := walker{seq: testSeq, pid: testPid, resType: tc.resType, fn: func(msg []byte) error {
				if len(msg) == 0 {
					t.Fatalf("empty payload")
				}
				got = append(got, msg[0])
				if tc.failOn != 0 && msg[0] == tc.failOn {
					return fnFail
				}
				return nil
			}}
			var err error
			left := len(tc.datagrams)
			for _, d := range tc.datagrams {
				left--
				var fin bool
				fin, err = w.datagram(d)
				if err != nil || fin {
					break
				}
			}
			if err == nil {
				err = w.result()
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("fn saw %v, want %v", got, tc.want)
			}
			if left != tc.unread {
				t.Errorf("%d datagrams unread, want %d", left, tc.unread)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("error %v, want none", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("error %v, want one with %q", err, tc.wantErr)
			case tc.is != nil && !errors.Is(err, tc.is):
				t.Errorf("error %v is not %v", err, tc.is)
			}
		})
	}
}

func TestWalkerAllocatesNothing(t *testing.T) {
	d := cat(part(1, 2, 3, 4), part(5, 6), part(7), done(0))
	var n int
	w := walker{seq: testSeq, pid: testPid, resType: testTyp, fn: func(msg []byte) error { n += len(msg); return nil }}
	allocs := testing.AllocsPerRun(100, func() {
		if fin, err := w.datagram(d); !fin || err != nil {
			t.Fatalf("datagram: %v, %v", fin, err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per datagram, want 0", allocs)
	}
}
