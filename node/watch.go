package node

import (
	"bytes"
	"fmt"
	"time"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

const (
	// watchPageBytes bounds the change-log bytes read for one response.
	watchPageBytes = 1 << 20
	// watchProgressEvery paces responses that only move the progress mark
	// (writes to keys the watch filters out), so a busy partition does not
	// wake every quiet watcher's client on each write.
	watchProgressEvery = time.Second
	// watchCheckEvery is how often an idle stream checks that its partition
	// is still hosted here.
	watchCheckEvery = time.Second
)

// watchService serves watches from the local replica's change log; any
// replica of the partition can serve one, whether it leads or not.
type watchService struct {
	gridpb.UnimplementedWatchServer
	s *service
}

func (w *watchService) Watch(req *gridpb.WatchRequest, stream gridpb.Watch_WatchServer) error {
	ctx := stream.Context()
	if err := grid.ValidateMapName(req.Map); err != nil {
		return err
	}
	if len(req.Prefix) > w.s.n.cfg.Limits.MaxKeyBytes {
		return fmt.Errorf("%w: watch prefix over %d bytes", grid.ErrKeyTooLarge, w.s.n.cfg.Limits.MaxKeyBytes)
	}
	if err := w.s.requireMap(ctx, req.Map); err != nil {
		return err
	}
	g, err := w.s.group(int(req.Partition))
	if err != nil {
		return err
	}
	check := time.NewTicker(watchCheckEvery)
	defer check.Stop()
	next := req.FromVersion // the next version to read
	var lastSent time.Time
	first := true
	pending := false // progress moved past what the client was last told
	for {
		changed := g.Changed() // before reading: an apply after the read closes it
		changes, progress, oldest, err := g.ReadChanges(next, watchPageBytes)
		if err != nil {
			return err
		}
		resp := &gridpb.WatchResponse{ProgressVersion: progress, OldestVersion: oldest}
		for _, c := range changes {
			var evs []*gridpb.WatchEvent
			for _, e := range c.Events {
				if e.Map == req.Map && bytes.HasPrefix(e.Key, req.Prefix) {
					evs = append(evs, e)
				}
			}
			if len(evs) > 0 {
				resp.Changes = append(resp.Changes, &gridpb.WatchChange{Version: c.Version, Events: evs})
			}
		}
		if progress+1 > next {
			next, pending = progress+1, true
		}
		if first || len(resp.Changes) > 0 || (pending && time.Since(lastSent) >= watchProgressEvery) {
			if err := stream.Send(resp); err != nil {
				return err
			}
			first, pending, lastSent = false, false, time.Now()
		}
		if g.Applied() > progress {
			continue // the read stopped at its byte bound, or more arrived
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-check.C:
			if cur, ok := w.s.n.host.Group(replication.GroupID(req.Partition)); !ok || cur != g {
				return fmt.Errorf("%w: partition %d left this node", grid.ErrPartitionNotHere, req.Partition)
			}
			// A replica cut off from its leader would keep the stream
			// waiting for changes it never receives: end it, so the
			// client resumes on a replica that has them.
			if g.CutOff() {
				return fmt.Errorf("%w: partition %d: this replica has not heard from a leader lately; resume on another", grid.ErrNoLeader, req.Partition)
			}
		}
	}
}
