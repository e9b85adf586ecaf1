package replication

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// Heartbeats of every group to one peer are coalesced: what the groups
// send within HeartbeatWindow goes as one message on one long-lived stream
// (the Heartbeats method), answered by one message. An idle node's CPU was
// mostly per-message cost — a write and a read syscall and a few goroutine
// wakeups on each side for every group's heartbeat, about ten a second per
// group and follower — so it now follows the peers, not the groups.
//
// A heartbeat that confirms leadership for a linearizable read (the group
// asked with urgentHeartbeats just before VerifyLeader) does not wait for
// the window: it flushes the peer's batch at once.
//
// hbPeer is one peer's batcher. Batches are sent under mu in the order
// their waiters are queued in inflight; the receiver goroutine (owned by
// the transport's wait group) answers them in that order. A stream error
// fails every waiter; the next heartbeat opens a new stream.
type hbPeer struct {
	t      *GRPCTransport
	target raft.ServerAddress
	window time.Duration

	mu       sync.Mutex
	stream   gridpb.Raft_HeartbeatsClient
	cancel   context.CancelFunc
	pending  []*gridpb.RaftAppendEntriesRequest
	waiting  []chan hbResult
	timer    *time.Timer
	inflight [][]chan hbResult
}

type hbResult struct {
	resp *gridpb.RaftAppendEntriesResponse
	err  error
}

var errHeartbeatStream = errors.New("replication: heartbeat stream broken")

// defaultHeartbeatWindow gathers about a tenth of a heartbeat interval (raft
// heartbeats every HeartbeatTimeout/10) under the default timing.
const defaultHeartbeatWindow = 20 * time.Millisecond

// maxHeartbeatBatch sends a batch at once when it reaches this size.
const maxHeartbeatBatch = 256

// heartbeatPeer returns the batcher for target, creating it on first use.
func (t *GRPCTransport) heartbeatPeer(target raft.ServerAddress) (*hbPeer, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, raft.ErrTransportShutdown
	}
	p, ok := t.heartbeats[target]
	if !ok {
		p = &hbPeer{t: t, target: target, window: t.cfg.HeartbeatWindow}
		t.heartbeats[target] = p
	}
	return p, nil
}

// flushHeartbeats sends every peer's pending batch now.
func (t *GRPCTransport) flushHeartbeats() {
	t.mu.Lock()
	peers := make([]*hbPeer, 0, len(t.heartbeats))
	for _, p := range t.heartbeats {
		peers = append(peers, p)
	}
	t.mu.Unlock()
	for _, p := range peers {
		p.flush()
	}
}

// heartbeat queues req for the peer and waits for its answer, up to timeout.
func (p *hbPeer) heartbeat(req *gridpb.RaftAppendEntriesRequest, urgent bool, timeout time.Duration) (*gridpb.RaftAppendEntriesResponse, error) {
	ch := make(chan hbResult, 1)
	p.mu.Lock()
	p.pending = append(p.pending, req)
	p.waiting = append(p.waiting, ch)
	switch {
	case urgent || p.window <= 0 || len(p.pending) >= maxHeartbeatBatch:
		p.flushLocked()
	case p.timer == nil:
		p.timer = time.AfterFunc(p.window, p.flush)
	}
	p.mu.Unlock()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-ch:
		return r.resp, r.err
	case <-timer.C:
		return nil, fmt.Errorf("replication: heartbeat to %s: %w", p.target, context.DeadlineExceeded)
	case <-p.t.ctx.Done():
		return nil, raft.ErrTransportShutdown
	}
}

func (p *hbPeer) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.flushLocked()
}

// flushLocked sends what is pending as one batch. Called with mu held.
func (p *hbPeer) flushLocked() {
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	if len(p.pending) == 0 {
		return
	}
	batch := &gridpb.RaftHeartbeatBatch{Requests: p.pending}
	waiting := p.waiting
	p.pending, p.waiting = nil, nil
	if p.stream == nil {
		if err := p.open(); err != nil {
			fail(waiting, err)
			return
		}
	}
	p.inflight = append(p.inflight, waiting)
	p.t.hbSent.Add(uint64(len(batch.Requests)))
	p.t.hbBatches.Add(1)
	if err := p.stream.Send(batch); err != nil {
		p.failLocked(err)
	}
}

func fail(waiting []chan hbResult, err error) {
	for _, w := range waiting {
		w <- hbResult{err: err}
	}
}

// open starts a stream and its receiver. Called with mu held.
func (p *hbPeer) open() error {
	c, err := p.t.client(p.target)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(p.t.ctx)
	stream, err := c.Heartbeats(ctx)
	if err != nil {
		cancel()
		return fmt.Errorf("replication: open heartbeat stream to %s: %w", p.target, err)
	}
	if !p.t.goFunc(func() { p.receive(stream) }) {
		cancel()
		return raft.ErrTransportShutdown
	}
	p.stream, p.cancel = stream, cancel
	return nil
}

// receive answers batches in order until the stream ends.
func (p *hbPeer) receive(stream gridpb.Raft_HeartbeatsClient) {
	for {
		resp, err := stream.Recv()
		p.mu.Lock()
		if p.stream != stream { // replaced after an error: its waiters were failed
			p.mu.Unlock()
			return
		}
		if err != nil {
			p.failLocked(err)
			p.mu.Unlock()
			return
		}
		var waiting []chan hbResult
		if len(p.inflight) > 0 {
			waiting, p.inflight = p.inflight[0], p.inflight[1:]
		}
		p.mu.Unlock()
		for i, w := range waiting {
			var r hbResult
			switch {
			case i >= len(resp.Results):
				r.err = fmt.Errorf("%w to %s: %d answers for %d heartbeats", errHeartbeatStream, p.target, len(resp.Results), len(waiting))
			case resp.Results[i].GetError() != "":
				r.err = fmt.Errorf("replication: heartbeat to %s: %s", p.target, resp.Results[i].GetError())
			default:
				r.resp = resp.Results[i].GetResponse()
			}
			w <- r
		}
	}
}

// failLocked ends the stream and fails every waiter. Called with mu held.
func (p *hbPeer) failLocked(err error) {
	if p.cancel != nil {
		p.cancel()
	}
	p.stream, p.cancel = nil, nil
	err = fmt.Errorf("%w to %s: %w", errHeartbeatStream, p.target, err)
	for _, waiting := range p.inflight {
		fail(waiting, err)
	}
	p.inflight = nil
}

// Heartbeats is the server side: each batch is handed, heartbeat by
// heartbeat, to the groups' fast-path handlers, and answered in one message.
func (s *raftService) Heartbeats(stream gridpb.Raft_HeartbeatsServer) error {
	ctx := stream.Context()
	watched := ""
	for {
		batch, err := stream.Recv()
		if err != nil {
			return err
		}
		// The sender leads groups this node follows: hold a connection to
		// it, so that its death is noticed here at once (watchPeer) even
		// if this node never sends it anything of its own.
		if len(batch.Requests) > 0 && s.t.cfg.OnPeerDown != nil {
			if from := string(batch.Requests[0].GetHeader().GetAddr()); from != "" && from != watched {
				if _, err := s.t.client(raft.ServerAddress(from)); err == nil {
					watched = from
				}
			}
		}
		out := &gridpb.RaftHeartbeatBatchResponse{Results: make([]*gridpb.RaftHeartbeatResult, len(batch.Requests))}
		for i, req := range batch.Requests {
			r := &gridpb.RaftHeartbeatResult{}
			res, err := s.heartbeat(ctx, req)
			if resp, ok := res.(*raft.AppendEntriesResponse); err == nil && ok {
				r.Response = appendEntriesResponseToPB(resp)
			} else if err != nil {
				r.Error = err.Error()
			} else {
				r.Error = unexpectedResponse(res).Error()
			}
			out.Results[i] = r
		}
		if err := stream.Send(out); err != nil {
			return err
		}
	}
}

// heartbeat hands one heartbeat of a batch to its group's fast-path
// handler. A group whose raft has not set one yet is answered with an
// error rather than queued behind its log writes: one slow group must not
// hold up the other groups' heartbeats in the batch.
func (s *raftService) heartbeat(ctx context.Context, req *gridpb.RaftAppendEntriesRequest) (any, error) {
	if err := s.checkSender(ctx, req.GetHeader()); err != nil {
		return nil, err
	}
	gt, err := s.t.lookup(GroupID(req.GetGroup()))
	if err != nil {
		return nil, err
	}
	if gt.heartbeat.Load() == nil {
		return nil, fmt.Errorf("replication: raft group %s on node %s takes no heartbeats yet", gt.id, s.t.cfg.LocalID)
	}
	return s.dispatchTo(ctx, gt, appendEntriesRequestFromPB(req))
}
