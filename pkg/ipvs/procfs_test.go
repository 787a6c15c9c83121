package ipvs

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

const procHeader = `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
`

func TestParseProcIPVS(t *testing.T) {
	vs := func(s string, p Proto) VSKey {
		ap := netip.MustParseAddrPort(s)
		return VSKey{Addr: ap.Addr(), Port: ap.Port(), Proto: p}
	}
	rs := func(s string, w int, f Forward) RealServer {
		ap := netip.MustParseAddrPort(s)
		return RealServer{Key: RSKey{Addr: ap.Addr(), Port: ap.Port()}, Weight: w, Forward: f}
	}
	tests := []struct {
		name    string
		in      string
		want    map[VSKey][]RealServer
		wantErr string
	}{
		{
			name: "empty table",
			in:   procHeader,
			want: map[VSKey][]RealServer{},
		},
		{
			name: "every kind of line",
			in: procHeader + `TCP  0A600001:01BB rr 
  -> AC1E000B:192B      Masq    1      0          0         
TCP  0A60000A:0050 wrr persistent 10800 FFFFFFFF
  -> 0AF40102:1F90      Masq    1      3          1         
  -> 0AF40103:1F90      Local   0      0          7         
  -> 0AF40104:1F90      Route   2      0          0         
  -> 0AF40105:1F90      Tunnel  5      0          0         
UDP  0A60000A:0035 rr 
SCTP 0A60000A:0050 sh 
  -> 0AF40102:0050      Masq    1      0          0         
FWM  00000001 rr 
  -> 0AF40109:0050      Masq    1      0          0         
UDP  [fd00:0010:0096:0000:0000:0000:0000:000a]:0035 rr 
  -> [fd00:0010:0244:0001:0000:0000:0000:0005]:0035      Masq    1      0          0         
AH   0A60000B:0000 rr 
  -> 0AF4010A:0000      Masq    1      0          0         
`,
			want: map[VSKey][]RealServer{
				vs("10.96.0.1:443", ProtoTCP): {rs("172.30.0.11:6443", 1, ForwardMasq)},
				vs("10.96.0.10:80", ProtoTCP): {
					rs("10.244.1.2:8080", 1, ForwardMasq),
					rs("10.244.1.3:8080", 0, ForwardMasq), // Local: masquerading to a local address
					rs("10.244.1.4:8080", 2, ForwardRoute),
					rs("10.244.1.5:8080", 5, ForwardTunnel),
				},
				vs("10.96.0.10:53", ProtoUDP):      {},
				vs("10.96.0.10:80", ProtoSCTP):     {rs("10.244.1.2:80", 1, ForwardMasq)},
				vs("[fd00:10:96::a]:53", ProtoUDP): {rs("[fd00:10:244:1::5]:53", 1, ForwardMasq)},
			},
		},
		{
			name: "a record shown twice while the table changed",
			in: procHeader + `TCP  0A600001:0050 rr 
  -> 0AF40102:1F90      Masq    1      0          0         
TCP  0A600001:0050 rr 
  -> 0AF40102:1F90      Masq    1      0          0         
`,
			want: map[VSKey][]RealServer{vs("10.96.0.1:80", ProtoTCP): {rs("10.244.1.2:8080", 1, ForwardMasq)}},
		},
		{name: "not the IPVS table", in: "Inter-|   Receive\n", wantErr: "not an IPVS table"},
		{name: "nothing", in: "", wantErr: "empty"},
		{name: "bad address", in: procHeader + "TCP  0A6000:0050 rr\n", wantErr: "not IPv4 hex"},
		{name: "bad port", in: procHeader + "TCP  0A600001:50 rr\n", wantErr: "no :PORT"},
		{name: "bad IPv6", in: procHeader + "TCP  [0A600001]:0050 rr\n", wantErr: "not IPv6"},
		{name: "bad forward", in: procHeader + "TCP  0A600001:0050 rr\n  -> 0AF40102:1F90      Bogus    1      0          0\n", wantErr: "unknown forwarding method"},
		{name: "bad weight", in: procHeader + "TCP  0A600001:0050 rr\n  -> 0AF40102:1F90      Masq    x      0          0\n", wantErr: "weight"},
		{name: "short destination", in: procHeader + "TCP  0A600001:0050 rr\n  -> 0AF40102:1F90\n", wantErr: "short destination"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseProcIPVS(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %v\nwant %v", got, tc.want)
			}
		})
	}
}
