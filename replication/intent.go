package replication

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
)

// A batch of applied entries larger than the engine writes at once (a
// restore batch of many small entries with expiries, or an entry whose
// change-log copy doubles its size) is committed in parts through an intent,
// so that it still commits atomically as far as recovery is concerned:
//
//  1. every op is written as an intent record, in engine-sized batches;
//  2. a commit record naming the applied index and the op count is written:
//     from here on the batch is decided;
//  3. the ops are applied to their keys in engine-sized batches, the last
//     one also setting the applied index and deleting the commit record;
//  4. the intent records are deleted.
//
// After a crash, openIntent redoes steps 3 and 4 if the commit record is
// there, and otherwise deletes intent records left by an unfinished step 1
// (the entries are then applied again from the Raft log). Readers may see
// part of such a batch while step 3 runs: only restore and expiry entries
// grow this large, and neither promises atomic visibility.
//
//	'i' group(u32) 'o' n(u32)   intent record n: flag(u8: 1 delete) klen(u32) key value
//	'i' group(u32) 'c'          commit record: applied index(u64) op count(u32)
const keyIntent = 'i'

func intentPrefix(g GroupID) []byte {
	b := make([]byte, 5, 10)
	b[0] = keyIntent
	binary.BigEndian.PutUint32(b[1:], uint32(g))
	return b
}

func intentOpKey(g GroupID, n uint32) []byte {
	return binary.BigEndian.AppendUint32(append(intentPrefix(g), 'o'), n)
}

func intentCommitKey(g GroupID) []byte { return append(intentPrefix(g), 'c') }

func encodeIntentOp(op Op) []byte {
	b := make([]byte, 0, 5+len(op.Key)+len(op.Value))
	flag := byte(0)
	if op.Delete {
		flag = 1
	}
	b = append(b, flag)
	b = binary.BigEndian.AppendUint32(b, uint32(len(op.Key)))
	b = append(b, op.Key...)
	return append(b, op.Value...)
}

func decodeIntentOp(b []byte) (Op, error) {
	if len(b) < 5 || b[0] > 1 {
		return Op{}, fmt.Errorf("%w: intent record of %d bytes", ErrCorrupt, len(b))
	}
	n := binary.BigEndian.Uint32(b[1:])
	if uint64(n) > uint64(len(b)-5) {
		return Op{}, fmt.Errorf("%w: intent record key of %d bytes in %d", ErrCorrupt, n, len(b))
	}
	key := append([]byte(nil), b[5:5+n]...)
	if b[0] == 1 {
		return Op{Key: key, Delete: true}, nil
	}
	return Op{Key: key, Value: append([]byte(nil), b[5+n:]...)}, nil
}

// chunked writes ops in order, in batches of at most the engine's limit.
func chunked(ctx context.Context, eng Engine, ops []Op) error {
	limit := eng.MaxBatchBytes()
	var b Batch
	for _, op := range ops {
		n := len(op.Key) + opOverhead
		if !op.Delete {
			n += len(op.Value)
		}
		if b.Len() > 0 && b.Size()+n > limit {
			if err := eng.Write(ctx, &b); err != nil {
				return err
			}
			b = Batch{}
		}
		if op.Delete {
			b.Del(op.Key)
		} else {
			b.Set(op.Key, op.Value)
		}
	}
	return eng.Write(ctx, &b)
}

// commitLarge commits b (whose ops include the applied index) in parts.
func commitLarge(eng Engine, g GroupID, index uint64, b *Batch) error {
	ctx := context.Background()
	recs := make([]Op, len(b.Ops))
	for i, op := range b.Ops {
		recs[i] = Op{Key: intentOpKey(g, uint32(i)), Value: encodeIntentOp(op)}
	}
	if err := chunked(ctx, eng, recs); err != nil {
		return fmt.Errorf("write intent: %w", err)
	}
	commit := binary.BigEndian.AppendUint64(nil, index)
	commit = binary.BigEndian.AppendUint32(commit, uint32(len(b.Ops)))
	var c Batch
	c.Set(intentCommitKey(g), commit)
	if err := eng.Write(ctx, &c); err != nil {
		return fmt.Errorf("write intent commit: %w", err)
	}
	return finishIntent(ctx, eng, g, b.Ops)
}

// finishIntent applies a decided intent's ops and removes the intent.
func finishIntent(ctx context.Context, eng Engine, g GroupID, ops []Op) error {
	// The commit record goes with the last ops (and the applied index).
	if err := chunked(ctx, eng, append(ops[:len(ops):len(ops)], Op{Key: intentCommitKey(g), Delete: true})); err != nil {
		return fmt.Errorf("apply intent: %w", err)
	}
	dels := make([]Op, len(ops))
	for i := range ops {
		dels[i] = Op{Key: intentOpKey(g, uint32(i)), Delete: true}
	}
	if err := chunked(ctx, eng, dels); err != nil {
		return fmt.Errorf("delete intent: %w", err)
	}
	return nil
}

// openIntent finishes or discards what a crash left of a commitLarge of
// group g. It runs before the group reads its applied index.
func openIntent(ctx context.Context, eng Engine, g GroupID) error {
	v, err := eng.NewView()
	if err != nil {
		return fmt.Errorf("replication: %s: open view for intent: %w", g, err)
	}
	commit, err := v.Get(intentCommitKey(g))
	decided := err == nil
	if err != nil && !errors.Is(err, ErrEngineNotFound) {
		v.Close()
		return fmt.Errorf("replication: %s: read intent commit: %w", g, err)
	}
	if decided && len(commit) != 12 {
		v.Close()
		return fmt.Errorf("%w: %s: intent commit record of %d bytes", ErrCorrupt, g, len(commit))
	}
	if !decided {
		v.Close()
		return dropIntent(ctx, eng, g) // an unfinished step 1: the log applies the entries again
	}
	var ops []Op
	err = v.Iterate(append(intentPrefix(g), 'o'), nil, func(_, val []byte) (bool, error) {
		op, err := decodeIntentOp(val)
		if err != nil {
			return false, err
		}
		ops = append(ops, op)
		return true, nil
	})
	v.Close()
	if err != nil {
		return fmt.Errorf("replication: %s: read intent: %w", g, err)
	}
	if want := binary.BigEndian.Uint32(commit[8:]); uint32(len(ops)) != want {
		return fmt.Errorf("%w: %s: intent has %d of its %d records", ErrCorrupt, g, len(ops), want)
	}
	if err := finishIntent(ctx, eng, g, ops); err != nil {
		return fmt.Errorf("replication: %s: finish intent at index %d: %w", g, binary.BigEndian.Uint64(commit), err)
	}
	return nil
}

// dropIntent deletes whatever intent records group g has (an undecided
// intent at open, or any when its replica is removed).
func dropIntent(ctx context.Context, eng Engine, g GroupID) error {
	v, err := eng.NewView()
	if err != nil {
		return fmt.Errorf("replication: %s: open view for intent: %w", g, err)
	}
	var dels []Op
	err = v.Iterate(intentPrefix(g), nil, func(k, _ []byte) (bool, error) {
		dels = append(dels, Op{Key: append([]byte(nil), k...), Delete: true})
		return true, nil
	})
	v.Close()
	if err != nil {
		return fmt.Errorf("replication: %s: read intent: %w", g, err)
	}
	if len(dels) == 0 {
		return nil
	}
	if err := chunked(ctx, eng, dels); err != nil {
		return fmt.Errorf("replication: %s: drop intent: %w", g, err)
	}
	return nil
}
