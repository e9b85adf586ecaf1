package replication

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// Heartbeats of every group to one peer are coalesced: what the groups
// send within HeartbeatWindow goes as one message on one long-lived stream
// (the Heartbeats method). An idle node's CPU was mostly per-message cost —
// a write and a read syscall and a few goroutine wakeups on each side for
// every group's heartbeat, about ten a second per group and follower — so
// it now follows the peers, not the groups.
//
// The same stream carries the AppendEntries without entries that an idle
// leader sends every CommitTimeout on each follower's pipeline to tell it
// the commit index (grpcPipeline diverts them here when nothing else is in
// flight on the pipeline). Those go through their group's raft loop at the
// peer, which may be busy writing its log, so the peer answers them when
// they are done rather than in order: every request is numbered, every
// answer names its number, and one slow group holds up no other group's
// heartbeat.
//
// A heartbeat that confirms leadership for a linearizable read (the group
// asked with urgentHeartbeats just before VerifyLeader) does not wait for
// the window: it flushes the peer's batch at once.
//
// hbPeer is one peer's batcher. Batches are sent under mu; the receiver
// goroutine (owned by the transport's wait group) hands each answer to the
// waiter its number names. A stream error fails every waiter of what was
// sent on it; the next request opens a new stream.
type hbPeer struct {
	t      *GRPCTransport
	target raft.ServerAddress
	window time.Duration

	mu      sync.Mutex
	stream  gridpb.Raft_HeartbeatsClient
	cancel  context.CancelFunc
	nextSeq uint64
	pending []*gridpb.RaftAppendEntriesRequest
	seqs    []uint64
	// waiters holds what to do with the answer to each request pending
	// or sent on the current stream, by number.
	waiters map[uint64]func(hbResult)
	timer   *time.Timer

	// heard is when the current stream last brought anything (unix ns; set
	// when it opens, 0 while none is open); suspected is set once the peer
	// was reported silent, until it is heard again (probePeer).
	heard     atomic.Int64
	suspected atomic.Bool
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

// maxHeartbeatAsync bounds the requests of one stream a server has handed
// to raft loops and not answered yet; past it, it answers with an error.
const maxHeartbeatAsync = 4096

// heartbeatPeer returns the batcher for target, creating it on first use.
func (t *GRPCTransport) heartbeatPeer(target raft.ServerAddress) (*hbPeer, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, raft.ErrTransportShutdown
	}
	p, ok := t.heartbeats[target]
	if !ok {
		p = &hbPeer{t: t, target: target, window: t.cfg.HeartbeatWindow, waiters: make(map[uint64]func(hbResult))}
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
	seq := p.send(req, urgent, func(r hbResult) { ch <- r })
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-ch:
		return r.resp, r.err
	case <-timer.C:
		p.forget(seq)
		return nil, fmt.Errorf("replication: heartbeat to %s: %w", p.target, context.DeadlineExceeded)
	case <-p.t.ctx.Done():
		p.forget(seq)
		return nil, raft.ErrTransportShutdown
	}
}

// send queues req for the peer and returns its number; done is called
// once, with the answer or the error that ended the wait, unless the
// request is forgotten first.
func (p *hbPeer) send(req *gridpb.RaftAppendEntriesRequest, urgent bool, done func(hbResult)) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nextSeq++
	seq := p.nextSeq
	p.pending = append(p.pending, req)
	p.seqs = append(p.seqs, seq)
	p.waiters[seq] = done
	switch {
	case urgent || p.window <= 0 || len(p.pending) >= maxHeartbeatBatch:
		p.flushLocked(0)
	case p.timer == nil:
		p.timer = time.AfterFunc(p.window, p.flush)
	}
	return seq
}

// forget drops the waiter of request seq (its caller stopped waiting); an
// answer arriving later is ignored. It reports whether the waiter was
// still there.
func (p *hbPeer) forget(seq uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.waiters[seq]
	delete(p.waiters, seq)
	return ok
}

func (p *hbPeer) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.flushLocked(0)
}

// ping sends a liveness probe now, with whatever heartbeats are pending,
// unless another send holds the batcher (a send blocked on a peer that
// reads nothing is itself a sign of silence, which probePeer sees).
func (p *hbPeer) ping() {
	if !p.mu.TryLock() {
		return
	}
	defer p.mu.Unlock()
	p.nextSeq++
	p.flushLocked(p.nextSeq)
}

// silentFor is how long the current stream has brought nothing (0 while
// no stream is open).
func (p *hbPeer) silentFor(now time.Time) time.Duration {
	h := p.heard.Load()
	if h == 0 {
		return 0
	}
	return now.Sub(time.Unix(0, h))
}

// flushLocked sends what is pending as one batch, with ping if it is not
// 0. Called with mu held.
func (p *hbPeer) flushLocked(ping uint64) {
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	if len(p.pending) == 0 && ping == 0 {
		return
	}
	batch := &gridpb.RaftHeartbeatBatch{Requests: p.pending, Seqs: p.seqs, Ping: ping}
	p.pending, p.seqs = nil, nil
	if p.stream == nil {
		if err := p.open(); err != nil {
			p.failLocked(batch.Seqs, err)
			return
		}
	}
	p.t.hbSent.Add(uint64(len(batch.Requests)))
	p.t.hbBatches.Add(1)
	if err := p.stream.Send(batch); err != nil {
		p.breakLocked(err)
	}
}

// failLocked fails the waiters of seqs. Called with mu held; the waiters
// must not block (heartbeat's channel is buffered, pipelines' callbacks
// close a channel).
func (p *hbPeer) failLocked(seqs []uint64, err error) {
	for _, seq := range seqs {
		if w, ok := p.waiters[seq]; ok {
			delete(p.waiters, seq)
			w(hbResult{err: err})
		}
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
	p.heard.Store(time.Now().UnixNano())
	return nil
}

// receive hands answers to their waiters until the stream ends.
func (p *hbPeer) receive(stream gridpb.Raft_HeartbeatsClient) {
	for {
		resp, err := stream.Recv()
		p.mu.Lock()
		if p.stream != stream { // replaced after an error: its waiters were failed
			p.mu.Unlock()
			return
		}
		if err != nil {
			p.breakLocked(err)
			p.mu.Unlock()
			return
		}
		p.heard.Store(time.Now().UnixNano())
		p.suspected.Store(false)
		type answer struct {
			w func(hbResult)
			r hbResult
		}
		answers := make([]answer, 0, len(resp.Results))
		for _, res := range resp.Results {
			w, ok := p.waiters[res.GetSeq()]
			if !ok {
				continue // forgotten, or a number never sent: nobody waits
			}
			delete(p.waiters, res.GetSeq())
			var r hbResult
			if res.GetError() != "" {
				r.err = fmt.Errorf("replication: heartbeat to %s: %s", p.target, res.GetError())
			} else {
				r.resp = res.GetResponse()
			}
			answers = append(answers, answer{w, r})
		}
		p.mu.Unlock()
		for _, a := range answers {
			a.w(a.r)
		}
	}
}

// breakLocked ends the stream and fails every waiter of what was sent on
// it (requests still pending go on the next stream). Called with mu held.
func (p *hbPeer) breakLocked(err error) {
	if p.cancel != nil {
		p.cancel()
	}
	p.stream, p.cancel = nil, nil
	p.heard.Store(0)
	err = fmt.Errorf("%w to %s: %w", errHeartbeatStream, p.target, err)
	queued := make(map[uint64]bool, len(p.seqs))
	for _, seq := range p.seqs {
		queued[seq] = true
	}
	var sent []uint64
	for seq := range p.waiters {
		if !queued[seq] {
			sent = append(sent, seq)
		}
	}
	p.failLocked(sent, err)
}

// Heartbeats is the server side. Heartbeats go to their groups' fast-path
// handlers as the batch is read; other requests (an idle leader's commit
// index) go through their group's raft loop on a goroutine each, so that a
// group busy with its log holds up no other. One sender goroutine answers
// whatever is done, several answers to a message.
func (s *raftService) Heartbeats(stream gridpb.Raft_HeartbeatsServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		done    []*gridpb.RaftHeartbeatResult
		pong    uint64 // the latest ping read and not answered yet
		async   int    // requests handed to raft loops, not answered yet
		ready   = make(chan struct{}, 1)
		sendErr = make(chan error, 1)
	)
	answer := func(rs ...*gridpb.RaftHeartbeatResult) {
		mu.Lock()
		done = append(done, rs...)
		mu.Unlock()
		select {
		case ready <- struct{}{}:
		default:
		}
	}
	wg.Add(1)
	go func() { // the one sender
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ready:
			}
			mu.Lock()
			out := &gridpb.RaftHeartbeatBatchResponse{Results: done, Pong: pong}
			done, pong = nil, 0
			mu.Unlock()
			if len(out.Results) == 0 && out.Pong == 0 {
				continue
			}
			if err := stream.Send(out); err != nil {
				sendErr <- err
				cancel()
				return
			}
		}
	}()
	defer func() {
		cancel()
		wg.Wait()
	}()
	watched := ""
	for {
		batch, err := stream.Recv()
		if err != nil {
			select {
			case err = <-sendErr:
			default:
			}
			return err
		}
		if len(batch.Seqs) != len(batch.Requests) {
			return status.Errorf(codes.InvalidArgument, "replication: a heartbeat batch numbers %d of its %d requests", len(batch.Seqs), len(batch.Requests))
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
		now := make([]*gridpb.RaftHeartbeatResult, 0, len(batch.Requests))
		for i, req := range batch.Requests {
			seq := batch.Seqs[i]
			args := appendEntriesRequestFromPB(req)
			if isHeartbeat(args) {
				now = append(now, s.answerBatched(ctx, seq, req, args))
				continue
			}
			if len(args.Entries) > 0 {
				now = append(now, &gridpb.RaftHeartbeatResult{Seq: seq, Error: fmt.Sprintf(
					"replication: an AppendEntries with %d entries on the heartbeat stream", len(args.Entries))})
				continue
			}
			mu.Lock()
			full := async >= maxHeartbeatAsync
			if !full {
				async++
			}
			mu.Unlock()
			if full {
				now = append(now, &gridpb.RaftHeartbeatResult{Seq: seq, Error: fmt.Sprintf(
					"replication: %d requests of this heartbeat stream are waiting for their groups", maxHeartbeatAsync)})
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := s.answerBatched(ctx, seq, req, args)
				mu.Lock()
				async--
				mu.Unlock()
				answer(r)
			}()
		}
		if batch.GetPing() != 0 {
			mu.Lock()
			pong = batch.GetPing()
			mu.Unlock()
		}
		answer(now...)
	}
}

// answerBatched hands request seq of a heartbeat batch to its group — a
// heartbeat to the fast-path handler, anything else to the raft loop — and
// returns its answer. A group whose raft has not set its heartbeat handler
// yet is answered with an error rather than queued behind its log writes:
// one slow group must not hold up the other groups' heartbeats in the batch.
func (s *raftService) answerBatched(ctx context.Context, seq uint64, req *gridpb.RaftAppendEntriesRequest, args *raft.AppendEntriesRequest) *gridpb.RaftHeartbeatResult {
	r := &gridpb.RaftHeartbeatResult{Seq: seq}
	res, err := func() (any, error) {
		if err := s.checkSender(ctx, req.GetHeader()); err != nil {
			return nil, err
		}
		gt, err := s.t.lookup(GroupID(req.GetGroup()))
		if err != nil {
			return nil, err
		}
		if isHeartbeat(args) && gt.heartbeat.Load() == nil {
			return nil, fmt.Errorf("replication: raft group %s on node %s takes no heartbeats yet", gt.id, s.t.cfg.LocalID)
		}
		return s.dispatchTo(ctx, gt, args)
	}()
	if resp, ok := res.(*raft.AppendEntriesResponse); err == nil && ok {
		r.Response = appendEntriesResponseToPB(resp)
	} else if err != nil {
		r.Error = err.Error()
	} else {
		r.Error = unexpectedResponse(res).Error()
	}
	return r
}

// probePeer is the node-level liveness check of the peer at target, for as
// long as the transport runs: while the connection is up, it pings the
// peer on its heartbeat stream four times per LivenessTimeout, and reports
// the peer to OnPeerDown once nothing at all (pong, heartbeat answer) has
// come back for LivenessTimeout; again only after the peer was heard from.
// A broken connection is watchPeer's to report.
//
// This is what lets a node's groups go quiet: a group's own heartbeats may
// be seconds apart and its election timeout long, because the death, pause
// or isolation of a leader's node is seen here, once per peer, and makes
// the groups it led elect at once (Host.SuspectPeer). A suspicion that is
// wrong costs an early election, never safety.
func (t *GRPCTransport) probePeer(cc *grpc.ClientConn, target raft.ServerAddress) {
	tick := time.NewTicker(t.cfg.LivenessTimeout / 4)
	defer tick.Stop()
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-tick.C:
		}
		if cc.GetState() != connectivity.Ready {
			continue
		}
		p, err := t.heartbeatPeer(target)
		if err != nil {
			return // the transport closed
		}
		p.ping()
		if silent := p.silentFor(time.Now()); silent > t.cfg.LivenessTimeout && p.suspected.CompareAndSwap(false, true) {
			t.logger.Info("raft peer silent; suspecting its node", "peer", string(target), "silent", silent.Round(time.Millisecond))
			t.cfg.OnPeerDown(string(target))
		}
	}
}
