package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/nlattr"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/nldump"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// nftables' generation of the ruleset (include/uapi/linux/netfilter/
// nf_tables.h): the kernel counts every committed change to any table of
// the network namespace, iptables-nft's included.
const (
	nftMsgGetGen = 16 // NFT_MSG_GETGEN
	nftaGenID    = 1  // NFTA_GEN_ID, big-endian u32
)

// NFTGeneration reads the nftables ruleset generation of the network
// namespace it was opened in (`nft list ruleset` shows nothing of it; the
// kernel answers NFT_MSG_GETGEN). With iptables-nft, an unchanged
// generation means no rule of any table changed, so a full resync can
// trust the rules it read last time instead of running iptables-save again.
type NFTGeneration struct {
	conn *nldump.Conn
}

// NewNFTGeneration opens a netfilter netlink socket in the current network
// namespace.
func NewNFTGeneration() (*NFTGeneration, error) {
	conn, err := nldump.Open(unix.NETLINK_NETFILTER, nil, socketTimeout)
	if err != nil {
		return nil, fmt.Errorf("netfilter netlink socket: %w", err)
	}
	return &NFTGeneration{conn: conn}, nil
}

// Close releases the socket.
func (g *NFTGeneration) Close() { g.conn.Close() }

// Get returns the current generation.
func (g *NFTGeneration) Get() (uint32, error) {
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_NFTABLES<<8|nftMsgGetGen, 0)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_UNSPEC, Version: nl.NFNETLINK_V0})
	var gen uint32
	found := false
	err := g.conn.Execute(req, 0, func(msg []byte) error {
		if len(msg) < nl.SizeofNfgenmsg {
			return nil
		}
		it := nlattr.Iter(msg[nl.SizeofNfgenmsg:])
		for it.Next() {
			if v := it.Value(); it.Type() == nftaGenID && len(v) >= 4 {
				gen, found = binary.BigEndian.Uint32(v), true
			}
		}
		return nil // a malformed tail leaves what was read
	})
	if err != nil {
		return 0, fmt.Errorf("NFT_MSG_GETGEN: %w", err)
	}
	if !found {
		return 0, errors.New("NFT_MSG_GETGEN: no generation in the answer")
	}
	return gen, nil
}
