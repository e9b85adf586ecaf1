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

	mu     sync.RWMutex
	maps   map[string]bool
	table  *grid.Table
	nodes  map[string]grid.NodeRecord
	secret []byte // SHA-256 of the join token; nil: joins are disabled
	// tableCh is closed, and replaced, whenever the table changes.
	tableCh chan struct{}
}

var _ applier = (*MetaState)(nil)

func newMetaState(g GroupID, eng Engine) (*MetaState, error) {
	m := &MetaState{group: g, tableCh: make(chan struct{})}
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

// Nodes lists the node records in id order.
func (m *MetaState) Nodes() []grid.NodeRecord {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]grid.NodeRecord, 0, len(m.nodes))
	for _, r := range m.nodes {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Node returns one node record.
func (m *MetaState) Node(id string) (grid.NodeRecord, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	r, ok := m.nodes[id]
	return r, ok
}

// JoinSecret is the SHA-256 of the cluster's join token, or nil when the
// cluster was started without one.
func (m *MetaState) JoinSecret() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.secret
}

// SharedTable returns the committed table itself, for the hot path: a
// committed table is replaced, never modified, so sharing it is safe as
// long as the caller does not modify it either.
func (m *MetaState) SharedTable() *grid.Table {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.table
}

// TableChanged returns a channel that is closed when the table next
// changes.
func (m *MetaState) TableChanged() <-chan struct{} {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.tableCh
}

// tableChangedLocked wakes everyone waiting on TableChanged; m.mu is held.
func (m *MetaState) tableChangedLocked() {
	if m.tableCh != nil {
		close(m.tableCh)
	}
	m.tableCh = make(chan struct{})
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
	nodes := map[string]grid.NodeRecord{}
	np := metaKey(m.group, "node")
	if err := v.Iterate(np, nil, func(_, raw []byte) (bool, error) {
		var r grid.NodeRecord
		if err := json.Unmarshal(raw, &r); err != nil {
			return false, fmt.Errorf("%w: stored node record: %v", ErrCorrupt, err)
		}
		nodes[r.ID] = r
		return true, nil
	}); err != nil {
		return fmt.Errorf("replication: load node records: %w", err)
	}
	var secret []byte
	raw, err = v.Get(metaKey(m.group, "secret"))
	switch {
	case errors.Is(err, ErrEngineNotFound):
	case err != nil:
		return fmt.Errorf("replication: load join secret: %w", err)
	default:
		secret = append([]byte(nil), raw...)
	}
	m.mu.Lock()
	m.maps, m.table, m.nodes, m.secret = maps, table, nodes, secret
	m.tableChangedLocked()
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
		m.tableChangedLocked()
		return applyResult{res: &gridpb.Result{Ok: true, Version: t.Epoch}}
	case *gridpb.MetaCommand_UpsertNode:
		var r grid.NodeRecord
		if err := json.Unmarshal(op.UpsertNode.RecordJson, &r); err != nil || r.Validate() != nil {
			return applyResult{res: &gridpb.Result{Error: "BAD_REQUEST"}}
		}
		tx.set(metaKey(m.group, "node", r.ID), op.UpsertNode.RecordJson)
		m.mu.Lock()
		m.nodes[r.ID] = r
		m.mu.Unlock()
		return applyResult{res: &gridpb.Result{Ok: true, Version: index}}
	case *gridpb.MetaCommand_SetJoinSecret:
		h := op.SetJoinSecret.TokenSha256
		if len(h) != 32 {
			return applyResult{res: &gridpb.Result{Error: "BAD_REQUEST"}}
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.secret != nil {
			return applyResult{res: &gridpb.Result{Ok: false, Version: index}}
		}
		tx.set(metaKey(m.group, "secret"), h)
		m.secret = append([]byte(nil), h...)
		return applyResult{res: &gridpb.Result{Ok: true, Version: index}}
	default:
		return applyResult{err: fmt.Errorf("%w: metadata command without an operation", ErrCorrupt)}
	}
}
