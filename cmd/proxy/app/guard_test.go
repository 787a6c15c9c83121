package app

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/guard"
)

func TestGuardFlags(t *testing.T) {
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	tests := []struct {
		name    string
		args    []string
		want    guard.Config
		wantErr []string // each must appear in the error
	}{
		{name: "defaults: no allowlist, no Service CIDR", want: guard.Config{}},
		{name: "both, dual-stack",
			args: []string{"--external-ip-allowed-cidrs=192.0.2.0/24, 2001:db8::/64", "--service-cidr=10.96.0.0/16,fd00:10:96::/112"},
			want: guard.Config{AllowedCIDRs: pfx("192.0.2.0/24", "2001:db8::/64"), ServiceCIDRs: pfx("10.96.0.0/16", "fd00:10:96::/112")}},
		{name: "repeated flags add up", args: []string{"--external-ip-allowed-cidrs=192.0.2.0/24", "--external-ip-allowed-cidrs=198.51.100.0/24"},
			want: guard.Config{AllowedCIDRs: pfx("192.0.2.0/24", "198.51.100.0/24")}},
		{name: "host bits cleared, mapped IPv4 unmapped",
			args: []string{"--external-ip-allowed-cidrs=192.0.2.7/24,::ffff:198.51.100.0/120", "--service-cidr=10.96.3.4/12"},
			want: guard.Config{AllowedCIDRs: pfx("192.0.2.0/24", "198.51.100.0/24"), ServiceCIDRs: pfx("10.96.0.0/12")}},
		{name: "everything allowed (still not the refused ranges)", args: []string{"--external-ip-allowed-cidrs=0.0.0.0/0,::/0"},
			want: guard.Config{AllowedCIDRs: pfx("0.0.0.0/0", "::/0")}},
		{name: "empty values", args: []string{"--external-ip-allowed-cidrs=", "--service-cidr="}, want: guard.Config{}},
		{name: "not CIDRs", args: []string{"--external-ip-allowed-cidrs=192.0.2.1", "--service-cidr=services"},
			wantErr: []string{`--external-ip-allowed-cidrs: "192.0.2.1" is not a valid CIDR`, `--service-cidr: "services" is not a valid CIDR`}},
		{name: "allowing only refused addresses", args: []string{"--external-ip-allowed-cidrs=127.0.0.0/16,169.254.169.254/32,fe80::/64,ff02::/16,192.0.2.0/24"},
			wantErr: []string{"127.0.0.0/16 is inside 127.0.0.0/8, which is always refused", "169.254.169.254/32 is inside 169.254.0.0/16",
				"fe80::/64 is inside fe80::/10", "ff02::/16 is inside ff00::/8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parse(t, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			verr := o.Validate()
			got, cerr := o.Guard.Config()
			if len(tt.wantErr) > 0 {
				if verr == nil || cerr == nil {
					t.Fatalf("Validate: %v, Config: %v; want errors", verr, cerr)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(verr.Error(), w) {
						t.Errorf("error %q does not say %q", verr, w)
					}
				}
				return
			}
			if verr != nil || cerr != nil {
				t.Fatalf("Validate: %v, Config: %v", verr, cerr)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("config %+v, want %+v", got, tt.want)
			}
		})
	}
}

// The flags are documented as ours, not kube-proxy's.
func TestGuardFlagsHelp(t *testing.T) {
	_, fs := parseFlags(t)
	for _, name := range []string{"external-ip-allowed-cidrs", "service-cidr"} {
		f := fs.Lookup(name)
		if f == nil {
			t.Fatalf("--%s not registered", name)
		}
		if !strings.Contains(f.Usage, "not a kube-proxy flag") {
			t.Errorf("--%s help does not say it is not kube-proxy's: %q", name, f.Usage)
		}
	}
}
