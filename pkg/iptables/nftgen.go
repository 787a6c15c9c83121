package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/nlattr"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
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
	sock  *nl.NetlinkSocket
	socks map[int]*nl.SocketHandle
}

// NewNFTGeneration opens a netfilter netlink socket in the current network
// namespace.
func NewNFTGeneration() (*NFTGeneration, error) {
	sock, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netfilter netlink socket: %w", err)
	}
	tv := unix.NsecToTimeval(socketTimeout.Nanoseconds())
	_ = sock.SetSendTimeout(&tv)
	_ = sock.SetReceiveTimeout(&tv)
	return &NFTGeneration{sock: sock, socks: map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: {Socket: sock}}}, nil
}

// Close releases the socket.
func (g *NFTGeneration) Close() { g.sock.Close() }

// Get returns the current generation.
func (g *NFTGeneration) Get() (uint32, error) {
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_NFTABLES<<8|nftMsgGetGen, 0)
	req.Sockets = g.socks
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_UNSPEC, Version: nl.NFNETLINK_V0})
	var gen uint32
	found := false
	err := req.ExecuteIter(unix.NETLINK_NETFILTER, 0, func(msg []byte) bool {
		if len(msg) < nl.SizeofNfgenmsg {
			return true
		}
		_ = nlattr.Walk(msg[nl.SizeofNfgenmsg:], func(t uint16, v []byte) error {
			if t == nftaGenID && len(v) >= 4 {
				gen, found = binary.BigEndian.Uint32(v), true
			}
			return nil
		})
		return true
	})
	if err != nil {
		return 0, fmt.Errorf("NFT_MSG_GETGEN: %w", err)
	}
	if !found {
		return 0, errors.New("NFT_MSG_GETGEN: no generation in the answer")
	}
	return gen, nil
}
