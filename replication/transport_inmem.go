package replication

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// inmemTimeout is how long an in-memory RPC waits for the peer's raft
// (InstallSnapshot gets ten times as long, as in raft.InmemTransport).
const inmemTimeout = time.Second

// InmemNetwork is an in-process network of nodes for tests, built on
// raft.InmemTransport, with knobs to cut links. Each node runs any number of
// Raft groups; group g on one node talks to group g on the others, as over
// the gRPC transport. Unlike raft.InmemTransport it has the heartbeat fast
// path, so it behaves like the real transport when a raft is busy.
//
// All methods are safe for concurrent use.
type InmemNetwork struct {
	// mu guards everything below and is held while (re)wiring the
	// raft.InmemTransports; it is never held while calling into raft.
	mu    sync.Mutex
	nodes map[raft.ServerAddress]*InmemNode
	// cuts holds links cut by Disconnect, keyed by the ordered pair.
	cuts map[[2]raft.ServerAddress]struct{}
	// partitions holds the sides given to Partition: two nodes are linked
	// only if each partition has both or neither of them.
	partitions []map[raft.ServerAddress]bool
}

// NewInmemNetwork returns an empty network with every link up.
func NewInmemNetwork() *InmemNetwork {
	return &InmemNetwork{
		nodes: make(map[raft.ServerAddress]*InmemNode),
		cuts:  make(map[[2]raft.ServerAddress]struct{}),
	}
}

// Node returns the node at addr (its Raft ServerAddress), creating it on
// first use, or again after the previous one was closed.
func (n *InmemNetwork) Node(addr string) *InmemNode {
	n.mu.Lock()
	defer n.mu.Unlock()
	a := raft.ServerAddress(addr)
	if nd, ok := n.nodes[a]; ok {
		return nd
	}
	nd := &InmemNode{net: n, addr: a, groups: make(map[GroupID]*inmemGroup)}
	n.nodes[a] = nd
	return nd
}

// Disconnect cuts the link between a and b in both directions, for every
// group, until Heal. Pipelines over the link are closed.
func (n *InmemNetwork) Disconnect(a, b string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cuts[linkKey(raft.ServerAddress(a), raft.ServerAddress(b))] = struct{}{}
	n.rewireLocked()
}

// Partition cuts every link between the nodes in side and all other nodes
// (also nodes created later), until Heal. Links within each side stay up.
func (n *InmemNetwork) Partition(side []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	set := make(map[raft.ServerAddress]bool, len(side))
	for _, s := range side {
		set[raft.ServerAddress(s)] = true
	}
	n.partitions = append(n.partitions, set)
	n.rewireLocked()
}

// Heal undoes every Disconnect and Partition.
func (n *InmemNetwork) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.cuts)
	n.partitions = nil
	n.rewireLocked()
}

func linkKey(a, b raft.ServerAddress) [2]raft.ServerAddress {
	if b < a {
		a, b = b, a
	}
	return [2]raft.ServerAddress{a, b}
}

func (n *InmemNetwork) linkedLocked(a, b *InmemNode) bool {
	if a.closed || b.closed {
		return false
	}
	if _, cut := n.cuts[linkKey(a.addr, b.addr)]; cut {
		return false
	}
	for _, p := range n.partitions {
		if p[a.addr] != p[b.addr] {
			return false
		}
	}
	return true
}

// rewireLocked makes every group transport's peer table match the links.
// raft.InmemTransport.Disconnect also closes pipelines to the peer, so a cut
// ends in-flight replication as a broken connection would.
func (n *InmemNetwork) rewireLocked() {
	for _, a := range n.nodes {
		for g, ga := range a.groups {
			for _, b := range n.nodes {
				if a == b {
					continue
				}
				if gb, ok := b.groups[g]; ok && n.linkedLocked(a, b) {
					ga.inner.Connect(b.addr, gb.inner)
				} else {
					ga.inner.Disconnect(b.addr)
				}
			}
		}
	}
}

// InmemNode is one node of an InmemNetwork: the in-memory counterpart of a
// node's GRPCTransport.
type InmemNode struct {
	net  *InmemNetwork
	addr raft.ServerAddress
	// groups and closed are guarded by net.mu.
	groups map[GroupID]*inmemGroup
	closed bool
}

var _ TransportFactory = (*InmemNode)(nil)

// Addr is the node's Raft ServerAddress.
func (nd *InmemNode) Addr() raft.ServerAddress { return nd.addr }

// Transport returns group g's raft.Transport on this node, creating it on
// the first call and returning the same object until it is closed (raft
// closes it in Shutdown); after that a new one is created. It implements
// raft.WithClose and raft.WithPreVote.
func (nd *InmemNode) Transport(g GroupID) raft.Transport {
	n := nd.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if gt, ok := nd.groups[g]; ok {
		return gt
	}
	gt := newInmemGroup(nd, g)
	if nd.closed {
		gt.stop()
		return gt
	}
	nd.groups[g] = gt
	n.rewireLocked()
	return gt
}

// Close takes the node off the network, as if it had died: every link to it
// is cut, its group transports are closed (their RPCs fail with
// raft.ErrTransportShutdown), and their goroutines have returned when
// Close does (or ctx is done). Node(addr) then creates a fresh node.
func (nd *InmemNode) Close(ctx context.Context) error {
	n := nd.net
	n.mu.Lock()
	if nd.closed {
		n.mu.Unlock()
		return nil
	}
	nd.closed = true
	groups := make([]*inmemGroup, 0, len(nd.groups))
	for _, gt := range nd.groups {
		groups = append(groups, gt)
	}
	n.rewireLocked()
	nd.groups = map[GroupID]*inmemGroup{}
	if n.nodes[nd.addr] == nd {
		delete(n.nodes, nd.addr)
	}
	n.mu.Unlock()
	for _, gt := range groups {
		gt.stop()
	}
	for _, gt := range groups {
		select {
		case <-gt.pumpDone:
		case <-ctx.Done():
			return fmt.Errorf("replication: close in-memory node %s: %w", nd.addr, ctx.Err())
		}
	}
	return nil
}

func (nd *InmemNode) removeGroup(gt *inmemGroup) {
	n := nd.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if nd.groups[gt.id] == gt {
		delete(nd.groups, gt.id)
		n.rewireLocked()
	}
}

// inmemGroup is one group's raft.Transport on an InmemNode: a
// raft.InmemTransport for sending, and a pump that takes what it receives,
// hands heartbeats to raft's fast-path handler and queues the rest, in
// order, for Consumer.
type inmemGroup struct {
	node     *InmemNode
	id       GroupID
	inner    *raft.InmemTransport
	consumer chan raft.RPC
	// heartbeat is raft's fast-path handler (nil until raft sets it).
	heartbeat atomic.Pointer[func(raft.RPC)]
	stopCh    chan struct{}
	stopOnce  sync.Once
	pumpDone  chan struct{}
}

var (
	_ raft.Transport   = (*inmemGroup)(nil)
	_ raft.WithClose   = (*inmemGroup)(nil)
	_ raft.WithPreVote = (*inmemGroup)(nil)
)

// deliverLocal hands raft an RPC this node makes itself.
func (gt *inmemGroup) deliverLocal(rpc raft.RPC, stop <-chan struct{}) bool {
	select {
	case gt.consumer <- rpc:
		return true
	case <-gt.stopCh:
	case <-stop:
	}
	return false
}

func newInmemGroup(nd *InmemNode, g GroupID) *inmemGroup {
	_, inner := raft.NewInmemTransportWithTimeout(nd.addr, inmemTimeout)
	gt := &inmemGroup{
		node:     nd,
		id:       g,
		inner:    inner,
		consumer: make(chan raft.RPC),
		stopCh:   make(chan struct{}),
		pumpDone: make(chan struct{}),
	}
	go gt.pump() // owned by gt: stop ends it, pumpDone reports it
	return gt
}

// pump moves RPCs from the inner transport to raft. It never blocks on the
// consumer while holding back a heartbeat: non-heartbeats wait in pending
// while the inner channel keeps being drained.
func (gt *inmemGroup) pump() {
	defer close(gt.pumpDone)
	in := gt.inner.Consumer()
	var pending []raft.RPC
	for {
		var out chan raft.RPC
		var next raft.RPC
		if len(pending) > 0 {
			out, next = gt.consumer, pending[0]
		}
		select {
		case rpc := <-in:
			if ae, ok := rpc.Command.(*raft.AppendEntriesRequest); ok && isHeartbeat(ae) {
				if fn := gt.heartbeat.Load(); fn != nil {
					(*fn)(rpc)
					continue
				}
			}
			pending = append(pending, rpc)
		case out <- next:
			pending[0] = raft.RPC{}
			pending = pending[1:]
		case <-gt.stopCh:
			// Senders' response channels are buffered: answering never blocks.
			for _, rpc := range pending {
				rpc.Respond(emptyResponse(rpc.Command), raft.ErrTransportShutdown)
			}
			for {
				select {
				case rpc := <-in:
					rpc.Respond(emptyResponse(rpc.Command), raft.ErrTransportShutdown)
				default:
					return
				}
			}
		}
	}
}

func (gt *inmemGroup) stop() {
	gt.stopOnce.Do(func() {
		close(gt.stopCh)
		_ = gt.inner.Close()
	})
}

func (gt *inmemGroup) isClosed() bool {
	select {
	case <-gt.stopCh:
		return true
	default:
		return false
	}
}

// Close implements raft.WithClose: the group leaves the network (peers can
// no longer reach it) and its pump stops. The node's other groups are not
// affected.
func (gt *inmemGroup) Close() error {
	gt.node.removeGroup(gt)
	gt.stop()
	<-gt.pumpDone
	return nil
}

// Consumer implements raft.Transport. The channel is never closed.
func (gt *inmemGroup) Consumer() <-chan raft.RPC { return gt.consumer }

// LocalAddr implements raft.Transport.
func (gt *inmemGroup) LocalAddr() raft.ServerAddress { return gt.node.addr }

// SetHeartbeatHandler implements raft.Transport.
func (gt *inmemGroup) SetHeartbeatHandler(cb func(raft.RPC)) {
	if cb == nil {
		gt.heartbeat.Store(nil)
		return
	}
	gt.heartbeat.Store(&cb)
}

// EncodePeer implements raft.Transport.
func (gt *inmemGroup) EncodePeer(id raft.ServerID, addr raft.ServerAddress) []byte {
	return gt.inner.EncodePeer(id, addr)
}

// DecodePeer implements raft.Transport.
func (gt *inmemGroup) DecodePeer(b []byte) raft.ServerAddress { return gt.inner.DecodePeer(b) }

// AppendEntriesPipeline implements raft.Transport.
func (gt *inmemGroup) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	if gt.isClosed() {
		return nil, raft.ErrTransportShutdown
	}
	return gt.inner.AppendEntriesPipeline(id, target)
}

// AppendEntries implements raft.Transport.
func (gt *inmemGroup) AppendEntries(id raft.ServerID, target raft.ServerAddress,
	args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	if gt.isClosed() {
		return raft.ErrTransportShutdown
	}
	return gt.inner.AppendEntries(id, target, args, resp)
}

// RequestVote implements raft.Transport.
func (gt *inmemGroup) RequestVote(id raft.ServerID, target raft.ServerAddress,
	args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	if gt.isClosed() {
		return raft.ErrTransportShutdown
	}
	return gt.inner.RequestVote(id, target, args, resp)
}

// RequestPreVote implements raft.WithPreVote.
func (gt *inmemGroup) RequestPreVote(id raft.ServerID, target raft.ServerAddress,
	args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	if gt.isClosed() {
		return raft.ErrTransportShutdown
	}
	return gt.inner.RequestPreVote(id, target, args, resp)
}

// TimeoutNow implements raft.Transport.
func (gt *inmemGroup) TimeoutNow(id raft.ServerID, target raft.ServerAddress,
	args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	if gt.isClosed() {
		return raft.ErrTransportShutdown
	}
	return gt.inner.TimeoutNow(id, target, args, resp)
}

// InstallSnapshot implements raft.Transport.
func (gt *inmemGroup) InstallSnapshot(id raft.ServerID, target raft.ServerAddress,
	args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	if gt.isClosed() {
		return raft.ErrTransportShutdown
	}
	return gt.inner.InstallSnapshot(id, target, args, resp, data)
}

// emptyResponse is a zero response of the type the command expects: raft's
// in-memory pipeline dereferences the response even when an error comes
// with it, so a nil one would panic.
func emptyResponse(cmd any) any {
	switch cmd.(type) {
	case *raft.AppendEntriesRequest:
		return &raft.AppendEntriesResponse{}
	case *raft.RequestVoteRequest:
		return &raft.RequestVoteResponse{}
	case *raft.RequestPreVoteRequest:
		return &raft.RequestPreVoteResponse{}
	case *raft.InstallSnapshotRequest:
		return &raft.InstallSnapshotResponse{}
	case *raft.TimeoutNowRequest:
		return &raft.TimeoutNowResponse{}
	}
	return nil
}
