package replication

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// expiredKeys lists up to limit entries of the expiry index due at now, in
// expiry order, from a local view.
func (g *Group) expiredKeys(now int64, limit int) ([]*gridpb.ExpiredKey, error) {
	v, err := g.sm.eng.NewView()
	if err != nil {
		return nil, fmt.Errorf("replication: %s: open view: %w", g.id, err)
	}
	defer v.Close()
	var out []*gridpb.ExpiredKey
	err = v.Iterate(expiryPrefix(g.id), nil, func(k, val []byte) (bool, error) {
		expiry, mapName, key, err := parseExpiryKey(k)
		if err != nil {
			return false, err
		}
		if expiry > now {
			return false, nil
		}
		if len(val) != 8 {
			return false, fmt.Errorf("%w: %s: expiry index value has %d bytes", ErrCorrupt, g.id, len(val))
		}
		out = append(out, &gridpb.ExpiredKey{
			Map: mapName, Key: append([]byte(nil), key...), Version: binary.BigEndian.Uint64(val), Expiry: expiry,
		})
		return len(out) < limit, nil
	})
	return out, err
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
	keys, err := g.expiredKeys(now, limit)
	if err != nil || len(keys) == 0 {
		return 0, err
	}
	cmd := &gridpb.Command{LeaderTime: now, Op: &gridpb.Command_Expire{Expire: &gridpb.ExpireOp{Keys: keys}}}
	if _, err := g.Propose(ctx, cmd); err != nil {
		return 0, fmt.Errorf("replication: %s: expire %d keys: %w", g.id, len(keys), err)
	}
	return len(keys), nil
}
