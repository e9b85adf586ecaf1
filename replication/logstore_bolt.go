package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
)

// logSource is what importGroup reads of an older store.
type logSource interface {
	FirstIndex() (uint64, error)
	LastIndex() (uint64, error)
	GetLog(index uint64, out *raft.Log) error
	Get(key []byte) ([]byte, error)
}

// migrateBoltLog moves every group's log and stable state from the shared
// bbolt file of earlier versions (path) into s, then deletes the file. A
// crash midway leaves the file, and the next start copies it again.
func migrateBoltLog(ctx context.Context, s *logDB, path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		return fmt.Errorf("replication: open raft log store %s to migrate: %w", path, err)
	}
	var groups []GroupID
	err = db.View(func(tx *bbolt.Tx) error {
		seen := map[GroupID]bool{}
		return tx.ForEach(func(name []byte, _ *bbolt.Bucket) error {
			if len(name) == 5 && (name[0] == 'l' || name[0] == 's') {
				if g := GroupID(binary.BigEndian.Uint32(name[1:])); !seen[g] {
					seen[g] = true
					groups = append(groups, g)
				}
			}
			return nil
		})
	})
	for _, g := range groups {
		if err != nil {
			break
		}
		err = s.importGroup(ctx, g, &boltGroup{db: db, g: g})
	}
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("replication: migrate raft log store %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("replication: remove migrated raft log store: %w", err)
	}
	return nil
}

// boltGroup reads one group of the shared bbolt file of earlier versions:
// bucket 'l'+group holds entries by big-endian index (encodeLog records),
// bucket 's'+group the stable state (sealRecord records).
type boltGroup struct {
	db *bbolt.DB
	g  GroupID
}

func (b *boltGroup) bucket(tx *bbolt.Tx, kind byte) *bbolt.Bucket {
	return tx.Bucket(binary.BigEndian.AppendUint32([]byte{kind}, uint32(b.g)))
}

func (b *boltGroup) edge(last bool) (uint64, error) {
	var idx uint64
	err := b.db.View(func(tx *bbolt.Tx) error {
		if bk := b.bucket(tx, 'l'); bk != nil {
			c := bk.Cursor()
			k, _ := c.First()
			if last {
				k, _ = c.Last()
			}
			if len(k) == 8 {
				idx = binary.BigEndian.Uint64(k)
			}
		}
		return nil
	})
	return idx, err
}

func (b *boltGroup) FirstIndex() (uint64, error) { return b.edge(false) }
func (b *boltGroup) LastIndex() (uint64, error)  { return b.edge(true) }

func (b *boltGroup) GetLog(index uint64, out *raft.Log) error {
	var val []byte
	if err := b.db.View(func(tx *bbolt.Tx) error {
		if bk := b.bucket(tx, 'l'); bk != nil {
			val = bytes.Clone(bk.Get(binary.BigEndian.AppendUint64(nil, index)))
		}
		return nil
	}); err != nil {
		return err
	}
	if val == nil {
		return raft.ErrLogNotFound
	}
	return decodeLog(val, out)
}

func (b *boltGroup) Get(key []byte) ([]byte, error) {
	var val []byte
	if err := b.db.View(func(tx *bbolt.Tx) error {
		if bk := b.bucket(tx, 's'); bk != nil {
			val = bytes.Clone(bk.Get(key))
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if val == nil {
		return nil, errStableNotFound
	}
	return openRecord(val)
}

// importGroup copies a group's log and stable state from src (an older
// store) into the shared store, replacing what it held of g.
func (s *logDB) importGroup(ctx context.Context, g GroupID, src logSource) error {
	if err := s.dropGroup(g); err != nil {
		return err
	}
	dst := s.group(g, nil)
	for _, key := range [][]byte{[]byte("CurrentTerm"), []byte("LastVoteTerm"), []byte("LastVoteCand")} {
		v, err := src.Get(key)
		if err != nil {
			continue // never set
		}
		if err := dst.Set(key, v); err != nil {
			return err
		}
	}
	first, err := src.FirstIndex()
	if err != nil {
		return err
	}
	last, err := src.LastIndex()
	if err != nil {
		return err
	}
	var batch []*raft.Log
	size := 0
	for i := first; first > 0 && i <= last; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		l := new(raft.Log)
		if err := src.GetLog(i, l); err != nil {
			return fmt.Errorf("read entry %d: %w", i, err)
		}
		batch = append(batch, l)
		size += len(l.Data)
		if len(batch) >= 256 || size >= 4<<20 {
			if err := dst.StoreLogs(batch); err != nil {
				return err
			}
			batch, size = nil, 0
		}
	}
	if len(batch) > 0 {
		return dst.StoreLogs(batch)
	}
	return nil
}
