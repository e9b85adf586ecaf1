package replication

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// Integrity keys live in the group's 'c' sub-space. They describe this
// replica, not the replicated state: snapshots and digests skip them, and
// RemoveGroup and a snapshot restore drop them with the rest of the prefix.
//
//	'p' group(u32) 'c' 'q'    quarantine record: why this replica is corrupt
const (
	subIntegrity  = 'c'
	keyQuarantine = 'q'
)

func quarantineKey(g GroupID) []byte { return append(groupPrefix(g), subIntegrity, keyQuarantine) }

// localOnly reports whether a key suffix (after the group prefix) belongs to
// this replica alone and is left out of snapshots and digests: the applied
// index (each replica flushes it at its own batch boundaries) and the
// integrity records.
func localOnly(suffix []byte) bool {
	return len(suffix) > 0 && (suffix[0] == subApplied || suffix[0] == subIntegrity)
}

// Quarantine state of a running group: once set, the replica serves no
// reads (grid.ErrChecksum) and the host's OnCorrupt callback has been told.
type corruption struct {
	reason atomic.Pointer[string]
	notify func(reason string)
}

// mark records the first reason and notifies the host once.
func (c *corruption) mark(reason string) {
	if c.reason.CompareAndSwap(nil, &reason) && c.notify != nil {
		c.notify(reason)
	}
}

func (c *corruption) err(g GroupID) error {
	if r := c.reason.Load(); r != nil {
		return fmt.Errorf("%w: replica of %s is quarantined (%s) and is being rebuilt; read another replica", grid.ErrChecksum, g, *r)
	}
	return nil
}

// Quarantined reports why this running replica was found corrupt, if it was.
func (g *Group) Quarantined() (string, bool) {
	if r := g.corrupt.reason.Load(); r != nil {
		return *r, true
	}
	return "", false
}

// DigestResult is one replica's digest of a partition at a check's index.
type DigestResult struct {
	Index     uint64
	Done      bool
	Digest    uint64
	Entries   uint64
	CRCErrors uint64
	Err       string
}

type checkKey struct {
	group GroupID
	id    uint64
}

// checks computes the digests CheckOps ask for, on goroutines it owns, at
// most maxDigests at a time, and keeps the last maxCheckResults results.
type checks struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sem    chan struct{}

	mu      sync.Mutex
	results map[checkKey]*DigestResult
	order   []checkKey
	queued  int
}

const (
	maxDigests      = 2
	maxQueuedChecks = 256
	maxCheckResults = 1024
)

func newChecks() *checks {
	ctx, cancel := context.WithCancel(context.Background())
	return &checks{ctx: ctx, cancel: cancel, sem: make(chan struct{}, maxDigests), results: map[checkKey]*DigestResult{}}
}

func (c *checks) close() {
	c.cancel()
	c.wg.Wait()
}

func (c *checks) put(k checkKey, r *DigestResult) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.results[k]; !ok {
		c.order = append(c.order, k)
		if len(c.order) > maxCheckResults {
			delete(c.results, c.order[0])
			c.order = c.order[1:]
		}
	}
	c.results[k] = r
}

// Result returns the digest of check id on group g, if this replica has
// applied its marker.
func (c *checks) result(g GroupID, id uint64) (DigestResult, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.results[checkKey{g, id}]
	if !ok {
		return DigestResult{}, false
	}
	return *r, true
}

// start opens a view of group g at index (the caller flushed every entry
// before it) and digests it in the background. It runs on the apply
// goroutine, so it only opens the view, which is cheap.
func (c *checks) start(eng Engine, g GroupID, id, index uint64) {
	k := checkKey{g, id}
	c.mu.Lock()
	busy := c.queued >= maxQueuedChecks
	if !busy {
		c.queued++
	}
	c.mu.Unlock()
	if busy {
		c.put(k, &DigestResult{Index: index, Done: true, Err: "too many digests queued on this node"})
		return
	}
	v, err := eng.NewView()
	if err != nil {
		c.finish(k, &DigestResult{Index: index, Done: true, Err: err.Error()})
		return
	}
	c.put(k, &DigestResult{Index: index})
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer v.Close()
		r := &DigestResult{Index: index, Done: true}
		select {
		case c.sem <- struct{}{}:
			defer func() { <-c.sem }()
			r.Digest, r.Entries, r.CRCErrors, err = digestView(c.ctx, v, g)
			if err != nil {
				r.Err = err.Error()
			}
		case <-c.ctx.Done():
			r.Err = "node shutting down"
		}
		c.finish(k, r)
	}()
}

func (c *checks) finish(k checkKey, r *DigestResult) {
	c.put(k, r)
	c.mu.Lock()
	c.queued--
	c.mu.Unlock()
}

// digestView hashes every replicated key and value of group g in v, in key
// order, and counts data entries that fail their CRC32C.
func digestView(ctx context.Context, v View, g GroupID) (digest, entries, crcErrors uint64, err error) {
	h := xxhash.New()
	prefix := groupPrefix(g)
	var hdr [4]byte
	err = v.Iterate(prefix, nil, func(k, val []byte) (bool, error) {
		suffix := k[len(prefix):]
		if localOnly(suffix) || suffix[0] == subWatch {
			// The watch change log is left out too: it is derived from the
			// log, its retention is a node setting, and a batch may write
			// its records ahead of the applied index (see txn.setEarly).
			return true, nil
		}
		binary.BigEndian.PutUint32(hdr[:], uint32(len(suffix)))
		h.Write(hdr[:])
		h.Write(suffix)
		binary.BigEndian.PutUint32(hdr[:], uint32(len(val)))
		h.Write(hdr[:])
		h.Write(val)
		entries++
		if suffix[0] == subData {
			if _, derr := decodeEntry(val); derr != nil {
				crcErrors++
			}
		}
		if entries%1024 == 0 {
			return true, ctx.Err()
		}
		return true, nil
	})
	return h.Sum64(), entries, crcErrors, err
}

// Digest returns this replica's digest for check id of group g (see
// CheckOp): ok is false until the replica has applied the marker.
func (h *Host) Digest(g GroupID, id uint64) (DigestResult, bool) { return h.checks.result(g, id) }

// ScrubResult is what one verification pass over a replica found.
type ScrubResult struct {
	Entries, BadEntries       uint64 // stored data entries, and those failing their CRC32C
	LogEntries, BadLogEntries uint64 // Raft log entries, and those unreadable or failing a value CRC32C
	FirstBad                  string // the first problem, for the report
}

func (r *ScrubResult) bad(format string, args ...any) {
	if r.FirstBad == "" {
		r.FirstBad = fmt.Sprintf(format, args...)
	}
}

// Scrub verifies every stored entry of an open data group against its
// CRC32C, and every command in its Raft log against the CRC32Cs of the
// values it carries. pace is called with the bytes read so far in the
// current step and may sleep to keep the scrub gentle.
func (h *Host) Scrub(ctx context.Context, id GroupID, pace func(ctx context.Context, bytes int) error) (ScrubResult, error) {
	var res ScrubResult
	g, ok := h.Group(id)
	if !ok {
		return res, fmt.Errorf("%w: %s", ErrNoGroup, id)
	}
	v, err := h.cfg.Engine.NewView()
	if err != nil {
		return res, fmt.Errorf("replication: %s: scrub view: %w", id, err)
	}
	data := append(groupPrefix(id), subData)
	err = v.Iterate(data, nil, func(k, val []byte) (bool, error) {
		res.Entries++
		if _, derr := decodeEntry(val); derr != nil {
			res.BadEntries++
			res.bad("stored entry %q fails its CRC32C", k[len(data):])
		}
		return true, pace(ctx, len(k)+len(val))
	})
	v.Close()
	if err != nil {
		return res, err
	}
	first, err := g.logs.FirstIndex()
	if err != nil {
		return res, fmt.Errorf("replication: %s: scrub log: %w", id, err)
	}
	last, err := g.logs.LastIndex()
	if err != nil {
		return res, fmt.Errorf("replication: %s: scrub log: %w", id, err)
	}
	for i := max(first, 1); first > 0 && i <= last; i++ {
		var l raft.Log
		err := g.logs.GetLog(i, &l)
		if errors.Is(err, raft.ErrLogNotFound) {
			continue // compacted meanwhile
		}
		res.LogEntries++
		if err != nil {
			res.BadLogEntries++
			res.bad("raft log entry %d unreadable: %v", i, err)
			continue
		}
		if l.Type == raft.LogCommand {
			if msg := commandCorruption(l.Data); msg != "" {
				res.BadLogEntries++
				res.bad("raft log entry %d: %s", i, msg)
			}
		}
		if err := pace(ctx, len(l.Data)); err != nil {
			return res, err
		}
	}
	return res, nil
}

// commandCorruption checks a data partition's command against the CRC32Cs
// its values carry ("" when it is sound). The leader checked them before
// proposing, so a mismatch means the entry changed after that.
func commandCorruption(data []byte) string {
	var cmd gridpb.Command
	if err := proto.Unmarshal(data, &cmd); err != nil {
		return "undecodable command: " + err.Error()
	}
	bad := func(key []byte, value []byte, crc uint32) string {
		if crc != 0 && Checksum(value) != crc {
			return fmt.Sprintf("value of %q fails its CRC32C", key)
		}
		return ""
	}
	switch op := cmd.Op.(type) {
	case *gridpb.Command_Put:
		return bad(op.Put.Key, op.Put.Value, op.Put.Crc)
	case *gridpb.Command_Cas:
		return bad(op.Cas.Key, op.Cas.Value, op.Cas.Crc)
	case *gridpb.Command_Txn:
		for _, branch := range [][]*gridpb.TxnWrite{op.Txn.ThenOps, op.Txn.ElseOps} {
			for _, w := range branch {
				if msg := bad(w.Key, w.Value, w.Crc); msg != "" && !w.Delete {
					return msg
				}
			}
		}
	}
	return ""
}

// Quarantine marks this node's replica of group id corrupt, durably, and
// shuts the group down (its state and Raft log stay on disk): it neither
// serves nor votes until it is rebuilt. Rebuilding is the cluster's job:
// the partition's leader removes this replica from the configuration, then
// RemoveGroup drops its state and it is added back as a learner fed from a
// snapshot. OpenGroup refuses a quarantined group.
func (h *Host) Quarantine(ctx context.Context, id GroupID, reason string) error {
	if err := h.markQuarantine(ctx, id, reason); err != nil {
		return err
	}
	h.mu.Lock()
	g, ok := h.groups[id]
	delete(h.groups, id)
	h.mu.Unlock()
	if ok {
		g.corrupt.mark(reason)
		if g.IsLeader() {
			_ = g.raft.LeadershipTransfer().Error() // best effort: the others elect anyway
		}
		return g.shutdown()
	}
	return nil
}

// markQuarantine durably records that group id is quarantined.
func (h *Host) markQuarantine(ctx context.Context, id GroupID, reason string) error {
	var b Batch
	b.Set(quarantineKey(id), []byte(reason))
	if err := h.cfg.Engine.Write(ctx, &b); err != nil {
		return fmt.Errorf("replication: %s: record quarantine: %w", id, err)
	}
	if err := h.cfg.Engine.Sync(); err != nil {
		return fmt.Errorf("replication: %s: record quarantine: %w", id, err)
	}
	return nil
}

// quarantineMark reads the durable quarantine record of group id.
func (h *Host) quarantineMark(id GroupID) (string, bool) {
	raw, err := h.cfg.Engine.Get(quarantineKey(id))
	if err != nil {
		return "", false
	}
	return string(raw), true
}

// QuarantineReason reports whether group id is quarantined on this node
// (open or not), and why.
func (h *Host) QuarantineReason(id GroupID) (string, bool) {
	if g, ok := h.Group(id); ok {
		if r, bad := g.Quarantined(); bad {
			return r, true
		}
	}
	return h.quarantineMark(id)
}
