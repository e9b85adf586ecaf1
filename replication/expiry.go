package replication

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"sync"

	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// expiredKeys lists up to limit entries of the expiry index due at now, in
// expiry order, from a local view. next is the expiry of the first entry
// not yet due (math.MaxInt64 if the index holds none).
func (g *Group) expiredKeys(now int64, limit int) (due []*gridpb.ExpiredKey, next int64, err error) {
	v, err := g.sm.eng.NewView()
	if err != nil {
		return nil, 0, fmt.Errorf("replication: %s: open view: %w", g.id, err)
	}
	defer v.Close()
	next = math.MaxInt64
	err = v.Iterate(expiryPrefix(g.id), nil, func(k, val []byte) (bool, error) {
		expiry, mapName, key, err := parseExpiryKey(k)
		if err != nil {
			return false, err
		}
		if expiry > now {
			next = expiry
			return false, nil
		}
		if len(val) != 8 {
			return false, fmt.Errorf("%w: %s: expiry index value has %d bytes", ErrCorrupt, g.id, len(val))
		}
		due = append(due, &gridpb.ExpiredKey{
			Map: mapName, Key: append([]byte(nil), key...), Version: binary.BigEndian.Uint64(val), Expiry: expiry,
		})
		return len(due) < limit, nil
	})
	return due, next, err
}

// expiryHint lets the sweep skip a partition with nothing due without
// reading its expiry index (a view and an iterator per partition and
// second were a few % of an idle node's CPU): the earliest expiry the index
// held when a sweep last found nothing due. It is forgotten whenever an
// applied batch files a new expiry — after the batch is written, so a
// sweep that starts later sees the entry — and when a snapshot replaces
// the state; a sweep that raced with that learns nothing (gen moved).
type expiryHint struct {
	mu   sync.Mutex
	gen  uint64
	next int64 // nothing in the index expires before this; 0: unknown
}

func (h *expiryHint) forget() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gen++
	h.next = 0
}

// skip reports whether nothing can be due at now, and the generation a
// sweep starting now must hand back to learn.
func (h *expiryHint) skip(now int64) (bool, uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return now < h.next, h.gen
}

func (h *expiryHint) learn(gen uint64, next int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gen == gen {
		h.next = next
	}
}

// dueForSweep lists up to limit expiry index entries due at now, unless
// the partition's hint says none can be; finding none, it teaches the hint
// when the next one is due.
func (g *Group) dueForSweep(now int64, limit int) ([]*gridpb.ExpiredKey, error) {
	kv, ok := g.sm.app.(*kvApplier)
	if !ok {
		return nil, nil // the metadata group keeps no expiry index
	}
	nothingDue, gen := kv.hint.skip(now)
	if nothingDue {
		return nil, nil
	}
	keys, next, err := g.expiredKeys(now, limit)
	if err == nil && len(keys) == 0 {
		kv.hint.learn(gen, next)
	}
	return keys, err
}

// SweepExpired deletes, through Raft, up to limit keys whose expiry has
// passed by this node's clock. Only the leader sweeps (elsewhere it does
// nothing); the command deletes a key only if it still has the version the
// index names and has expired as of the command's leader time, so a key
// rewritten meanwhile survives. It returns how many index entries the
// command covered: limit means more may be due.
func (g *Group) SweepExpired(ctx context.Context, limit int) (int, error) {
	if !g.IsLeader() {
		return 0, nil
	}
	now := g.now()
	keys, err := g.dueForSweep(now, limit)
	if err != nil || len(keys) == 0 {
		return 0, err
	}
	cmd := &gridpb.Command{LeaderTime: now, Op: &gridpb.Command_Expire{Expire: &gridpb.ExpireOp{Keys: keys}}}
	if _, err := g.Propose(ctx, cmd); err != nil {
		return 0, fmt.Errorf("replication: %s: expire %d keys: %w", g.id, len(keys), err)
	}
	return len(keys), nil
}
