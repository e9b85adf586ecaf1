package node

import (
	"context"
	"fmt"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

// backupChunkBytes bounds the values of one ReadPartition message (a message
// holds at least one entry, so it stays under a max value plus this).
const backupChunkBytes = 1 << 20

// backupService serves backups (a partition's entries from one view on its
// leader) and restores (entries written through Raft).
type backupService struct {
	gridpb.UnimplementedBackupServer
	s *service
}

func (b *backupService) ReadPartition(req *gridpb.ReadPartitionRequest, stream gridpb.Backup_ReadPartitionServer) error {
	ctx := stream.Context()
	g, err := b.s.group(int(req.Partition))
	if err != nil {
		return err
	}
	var (
		chunk []*gridpb.BackupEntry
		size  int
		count uint64
	)
	send := func(last *gridpb.ReadPartitionResponse) error {
		if last == nil {
			last = &gridpb.ReadPartitionResponse{}
		}
		last.Entries = chunk
		err := stream.Send(last)
		chunk, size = nil, 0
		return err
	}
	applied, err := g.Dump(ctx, true, func(mapName string, key []byte, e replication.StoredEntry) error {
		chunk = append(chunk, &gridpb.BackupEntry{
			Map: mapName, Key: append([]byte(nil), key...), Value: append([]byte(nil), e.Value...), Crc: e.CRC, Expiry: e.Expiry,
		})
		count++
		if size += len(key) + len(e.Value); size >= backupChunkBytes {
			return send(nil)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return send(&gridpb.ReadPartitionResponse{Done: true, Count: count, AppliedIndex: applied, ServedBy: b.s.n.cfg.ID})
}

// Restore validates every entry (map, limits, checksum, partition) before
// proposing the batch, so a bad request changes nothing.
func (b *backupService) Restore(ctx context.Context, req *gridpb.RestoreRequest) (*gridpb.RestoreResponse, error) {
	if req.ClientId == 0 {
		return nil, fmt.Errorf("%w: a restore batch needs a client id", grid.ErrBadRequest)
	}
	if len(req.Entries) == 0 {
		return nil, fmt.Errorf("%w: empty restore batch", grid.ErrBadRequest)
	}
	limits := b.s.n.cfg.Limits
	g, err := b.s.group(int(req.Partition))
	if err != nil {
		return nil, err
	}
	parts := b.s.n.table().NumPartitions()
	cost := 0
	known := map[string]bool{}
	for _, e := range req.Entries {
		if !known[e.Map] {
			if err := grid.ValidateMapName(e.Map); err != nil {
				return nil, err
			}
			if err := b.s.requireMap(ctx, e.Map); err != nil {
				return nil, err
			}
			known[e.Map] = true
		}
		if err := limits.CheckKey(e.Key); err != nil {
			return nil, err
		}
		if err := limits.CheckValue(e.Value); err != nil {
			return nil, fmt.Errorf("key %q: %w", e.Key, err)
		}
		if e.Crc != replication.Checksum(e.Value) {
			return nil, fmt.Errorf("%w: map %q key %q: value does not match its CRC32C", grid.ErrChecksum, e.Map, e.Key)
		}
		if p := grid.PartitionOf(e.Map, e.Key, parts); p != int(req.Partition) {
			return nil, fmt.Errorf("%w: map %q key %q belongs to partition %d, not %d", grid.ErrBadRequest, e.Map, e.Key, p, req.Partition)
		}
		cost += grid.RestoreEntryCost(e.Map, e.Key, e.Value, e.Expiry)
	}
	if limit := limits.MaxRestoreBatch(); cost > limit {
		return nil, fmt.Errorf("%w: restore batch of %d entries costs %d bytes, limit %d", grid.ErrValueTooLarge, len(req.Entries), cost, limit)
	}
	h := &gridpb.WriteHeader{ClientId: req.ClientId, Seq: req.Seq}
	res, err := b.s.propose(ctx, g, h, &gridpb.Command{Op: &gridpb.Command_Restore{Restore: &gridpb.RestoreOp{Entries: req.Entries}}})
	if err != nil {
		return nil, err
	}
	return &gridpb.RestoreResponse{Version: res.Version}, nil
}
