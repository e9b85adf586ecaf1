package replication

import (
	"strconv"

	"github.com/hashicorp/raft"
)

// GroupID names one Raft group on a node: a partition number, or MetaGroup.
// Every Raft message between nodes carries it, because all of a node's
// groups share one server and one connection per peer.
type GroupID uint32

// MetaGroup is the metadata group (membership, node records, the partition
// table, map settings).
const MetaGroup GroupID = 0xFFFFFFFF

// String returns "meta" for MetaGroup and "p<n>" for partition n.
func (g GroupID) String() string {
	if g == MetaGroup {
		return "meta"
	}
	return "p" + strconv.FormatUint(uint64(g), 10)
}

// TransportFactory hands out the raft.Transport of each group on one node.
// The gRPC transport and the in-memory test network both implement it.
type TransportFactory interface {
	Transport(GroupID) raft.Transport
}

// isHeartbeat reports whether req is a bare heartbeat, by the same test as
// raft's NetworkTransport. Transports hand heartbeats to raft's fast-path
// handler so they never wait behind log writes on the Consumer channel.
func isHeartbeat(req *raft.AppendEntriesRequest) bool {
	leader := req.RPCHeader.Addr
	if len(leader) == 0 {
		leader = req.Leader
	}
	return req.Term != 0 && leader != nil &&
		req.PrevLogEntry == 0 && req.PrevLogTerm == 0 &&
		len(req.Entries) == 0 && req.LeaderCommitIndex == 0
}
