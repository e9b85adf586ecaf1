package replication

import (
	"context"
	"fmt"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// Dump calls fn for every data entry of every map of the group, in engine
// key order, from one read view (see ReadView: linearizable means on the
// leader, after confirming leadership), after verifying each value's
// checksum. It returns the applied index stored in that same view, so the
// entries are exactly the group's state at that index. mapName, key and
// e.Value are valid only during the call.
func (g *Group) Dump(ctx context.Context, linearizable bool, fn func(mapName string, key []byte, e StoredEntry) error) (uint64, error) {
	v, _, err := g.ReadView(ctx, linearizable)
	if err != nil {
		return 0, err
	}
	defer v.Close()
	applied, err := readApplied(v, g.id)
	if err != nil {
		return 0, err
	}
	prefix := append(groupPrefix(g.id), subData)
	n := 0
	err = v.Iterate(prefix, nil, func(k, val []byte) (bool, error) {
		rest := k[len(prefix):]
		if len(rest) < 1 || len(rest) < 1+int(rest[0]) {
			return false, fmt.Errorf("%w: %s: malformed data key", ErrCorrupt, g.id)
		}
		mapName, key := string(rest[1:1+int(rest[0])]), rest[1+int(rest[0]):]
		e, err := decodeEntry(val)
		if err != nil {
			return false, fmt.Errorf("%w: %s map %q key %q: %w", grid.ErrChecksum, g.id, mapName, key, err)
		}
		if n++; n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return false, err
			}
		}
		return true, fn(mapName, key, e)
	})
	if err != nil {
		return 0, err
	}
	return applied, nil
}

// applyRestore writes restored entries with this index as their version.
// Every CRC32C is checked before any write, so a bad entry changes nothing;
// an entry already expired at the leader's time is skipped.
func (a *kvApplier) applyRestore(tx *txn, index uint64, now int64, r *gridpb.RestoreOp) (*gridpb.Result, error) {
	for _, e := range r.Entries {
		if Checksum(e.Value) != e.Crc {
			// The node checked every CRC before proposing: the entry
			// changed since (a damaged log here), as for any write.
			return a.checksumMismatch(index, e.Key)
		}
	}
	for _, e := range r.Entries {
		if e.Expiry != 0 && e.Expiry <= now {
			continue
		}
		a.putEntry(tx, e.Map, e.Key, StoredEntry{Version: index, Expiry: e.Expiry, CRC: e.Crc, Value: e.Value})
	}
	return &gridpb.Result{Ok: true, Version: index}, nil
}
