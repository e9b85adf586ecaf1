package replication

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// MetaState is the metadata group's state machine view: map names and the
// partition table. Reads come from an in-memory copy kept in step with the
// engine (it is small), so routing never touches the disk.
type MetaState struct {
	group GroupID

	mu    sync.RWMutex
	maps  map[string]bool
	table *grid.Table
}

var _ applier = (*MetaState)(nil)

func newMetaState(g GroupID, eng Engine) (*MetaState, error) {
	m := &MetaState{group: g}
	if err := m.restored(eng); err != nil {
		return nil, err
	}
	return m, nil
}

// HasMap reports whether the map exists.
func (m *MetaState) HasMap(name string) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.maps[name]
}

// Maps lists map names in order.
func (m *MetaState) Maps() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]string, 0, len(m.maps))
	for n := range m.maps {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// SharedTable returns the committed table itself, for the hot path: a
// committed table is replaced, never modified, so sharing it is safe as
// long as the caller does not modify it either.
func (m *MetaState) SharedTable() *grid.Table {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.table
}

// Table returns a copy of the committed partition table, or nil before one
// has been committed.
func (m *MetaState) Table() *grid.Table {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.table == nil {
		return nil
	}
	return m.table.Clone()
}

func (m *MetaState) restored(eng Engine) error {
	v, err := eng.NewView()
	if err != nil {
		return fmt.Errorf("replication: metadata view: %w", err)
	}
	defer v.Close()
	maps := map[string]bool{}
	mp := metaKey(m.group, "map")
	if err := v.Iterate(mp, nil, func(k, _ []byte) (bool, error) {
		name := string(k[len(mp):])
		maps[name[:len(name)-1]] = true
		return true, nil
	}); err != nil {
		return fmt.Errorf("replication: load maps: %w", err)
	}
	var table *grid.Table
	raw, err := v.Get(metaKey(m.group, "table"))
	switch {
	case errors.Is(err, ErrEngineNotFound):
	case err != nil:
		return fmt.Errorf("replication: load table: %w", err)
	default:
		table = &grid.Table{}
		if err := json.Unmarshal(raw, table); err != nil {
			return fmt.Errorf("%w: stored partition table: %v", ErrCorrupt, err)
		}
	}
	m.mu.Lock()
	m.maps, m.table = maps, table
	m.mu.Unlock()
	return nil
}

func (m *MetaState) apply(tx *txn, index uint64, data []byte) any {
	var cmd gridpb.MetaCommand
	if err := proto.Unmarshal(data, &cmd); err != nil {
		return applyResult{err: fmt.Errorf("%w: undecodable metadata command at %d: %v", ErrCorrupt, index, err)}
	}
	switch op := cmd.Op.(type) {
	case *gridpb.MetaCommand_CreateMap:
		name := op.CreateMap.Name
		if grid.ValidateMapName(name) != nil {
			return applyResult{res: &gridpb.Result{Error: "INVALID_MAP_NAME"}}
		}
		if m.HasMap(name) {
			return applyResult{res: &gridpb.Result{Error: "MAP_EXISTS"}}
		}
		tx.set(metaKey(m.group, "map", name), []byte{1})
		m.mu.Lock()
		m.maps[name] = true
		m.mu.Unlock()
		return applyResult{res: &gridpb.Result{Ok: true, Version: index}}
	case *gridpb.MetaCommand_SetTable:
		var t grid.Table
		if err := json.Unmarshal(op.SetTable.TableJson, &t); err != nil {
			return applyResult{res: &gridpb.Result{Error: "BAD_REQUEST"}}
		}
		if err := t.Validate(); err != nil {
			return applyResult{res: &gridpb.Result{Error: "BAD_REQUEST"}}
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		cur := uint64(0)
		if m.table != nil {
			cur = m.table.Epoch
		}
		if cur != op.SetTable.ExpectedEpoch || t.Epoch <= cur {
			return applyResult{res: &gridpb.Result{Ok: false, Version: cur}}
		}
		tx.set(metaKey(m.group, "table"), op.SetTable.TableJson)
		m.table = &t
		return applyResult{res: &gridpb.Result{Ok: true, Version: t.Epoch}}
	default:
		return applyResult{err: fmt.Errorf("%w: metadata command without an operation", ErrCorrupt)}
	}
}
