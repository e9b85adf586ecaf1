package replication

import (
	"encoding/binary"
	"fmt"
)

// Engine key layout. Every group owns one prefix, so a group's whole state
// (data, applied index, dedup records) can be snapshotted by iterating the
// prefix and dropped with one DropPrefix:
//
//	'p' group(u32) 'a'                         applied index (u64)
//	'p' group(u32) 'r' client(u64) seq(u64)    dedup record: leader time(i64) + Result
//	'p' group(u32) 't' time(u64) client seq    the same record's entry in time order (value 1 byte)
//	'p' group(u32) 'd' len(map)(u8) map key    data entry (see entry encoding)
//	'p' group(u32) 'm' ...                     metadata group records
//	'p' group(u32) 'l' 'k' name                lock record (gridpb.LockRecord)
//	'p' group(u32) 'l' 'f' name                fence: highest accepted token (u64)
//	'p' group(u32) 'w'                         change log state: pruned-through(u64) bytes(u64)
//	'p' group(u32) 'w' index(u64)              change log record (WatchLogRecord) of one entry
//	'p' group(u32) 'e' expiry(i64) len(map)(u8) map key   expiry index: version(u64)
//	'x' group(u32)                             restore in progress (outside the prefix)
//	'i' group(u32) ...                         a batch being committed in parts (intent.go; outside the prefix)
const (
	keyGroup     = 'p'
	keyRestoring = 'x'
	subApplied   = 'a'
	subDedup     = 'r'
	subDedupTime = 't'
	subData      = 'd'
	subMeta      = 'm'
	subLock      = 'l'
	subWatch     = 'w'
	subExpiry    = 'e'
)

func groupPrefix(g GroupID) []byte {
	b := make([]byte, 5, 5+16)
	b[0] = keyGroup
	binary.BigEndian.PutUint32(b[1:], uint32(g))
	return b
}

func restoringKey(g GroupID) []byte {
	b := make([]byte, 5)
	b[0] = keyRestoring
	binary.BigEndian.PutUint32(b[1:], uint32(g))
	return b
}

func appliedKey(g GroupID) []byte { return append(groupPrefix(g), subApplied) }

func dedupPrefix(g GroupID) []byte { return append(groupPrefix(g), subDedup) }

// dedupTimePrefix orders the dedup records by leader time, so pruning reads
// only the expired ones: 'p' group 't' time(u64) client(u64) seq(u64).
func dedupTimePrefix(g GroupID) []byte { return append(groupPrefix(g), subDedupTime) }

func dedupTimeKey(g GroupID, leaderTime int64, client, seq uint64) []byte {
	b := binary.BigEndian.AppendUint64(dedupTimePrefix(g), uint64(max(leaderTime, 0)))
	b = binary.BigEndian.AppendUint64(b, client)
	return binary.BigEndian.AppendUint64(b, seq)
}

func dedupKey(g GroupID, client, seq uint64) []byte {
	b := append(groupPrefix(g), subDedup)
	b = binary.BigEndian.AppendUint64(b, client)
	return binary.BigEndian.AppendUint64(b, seq)
}

// mapPrefix is the prefix of every data key of one map in one partition.
func mapPrefix(g GroupID, mapName string) []byte {
	b := make([]byte, 0, 7+len(mapName))
	b = append(b, groupPrefix(g)...)
	b = append(b, subData, byte(len(mapName)))
	return append(b, mapName...)
}

func dataKey(g GroupID, mapName string, key []byte) []byte {
	return append(mapPrefix(g, mapName), key...)
}

// lockKey is where a lock's record lives in its partition.
func lockKey(g GroupID, name string) []byte {
	return append(append(groupPrefix(g), subLock, 'k'), name...)
}

// fenceKey is where a partition keeps the highest token it has accepted for
// a fence name.
func fenceKey(g GroupID, name string) []byte {
	return append(append(groupPrefix(g), subLock, 'f'), name...)
}

func watchStateKey(g GroupID) []byte { return append(groupPrefix(g), subWatch) }

func watchRecordKey(g GroupID, index uint64) []byte {
	return binary.BigEndian.AppendUint64(watchStateKey(g), index)
}

func expiryPrefix(g GroupID) []byte { return append(groupPrefix(g), subExpiry) }

// expiryKey files key under its expiry; expiries are positive unix
// nanoseconds, so big-endian order is time order.
func expiryKey(g GroupID, expiry int64, mapName string, key []byte) []byte {
	b := make([]byte, 0, 6+8+1+len(mapName)+len(key))
	b = append(b, expiryPrefix(g)...)
	b = binary.BigEndian.AppendUint64(b, uint64(expiry))
	b = append(b, byte(len(mapName)))
	b = append(b, mapName...)
	return append(b, key...)
}

// parseExpiryKey splits an expiry index key (with its group prefix).
func parseExpiryKey(k []byte) (expiry int64, mapName string, key []byte, err error) {
	const head = 6 + 8 + 1
	if len(k) < head || int(k[head-1]) > len(k)-head {
		return 0, "", nil, fmt.Errorf("%w: malformed expiry index key (%d bytes)", ErrCorrupt, len(k))
	}
	expiry = int64(binary.BigEndian.Uint64(k[6:]))
	n := int(k[head-1])
	return expiry, string(k[head : head+n]), k[head+n:], nil
}

func metaKey(g GroupID, parts ...string) []byte {
	b := append(groupPrefix(g), subMeta)
	for _, p := range parts {
		b = append(b, p...)
		b = append(b, 0)
	}
	return b
}

// Entry encoding of a data value:
//
//	format(u8)=1 version(u64) expiry(i64 unix nanos, 0 = none) crc32c(u32) value
const (
	entryFormat    = 1
	entryHeaderLen = 1 + 8 + 8 + 4
)

// StoredEntry is a decoded data value.
type StoredEntry struct {
	Version uint64
	Expiry  int64
	CRC     uint32
	Value   []byte
}

func encodeEntry(e StoredEntry) []byte {
	b := make([]byte, entryHeaderLen, entryHeaderLen+len(e.Value))
	b[0] = entryFormat
	binary.BigEndian.PutUint64(b[1:], e.Version)
	binary.BigEndian.PutUint64(b[9:], uint64(e.Expiry))
	binary.BigEndian.PutUint32(b[17:], e.CRC)
	return append(b, e.Value...)
}

// decodeEntry parses b and verifies the value's CRC32C. The returned Value
// aliases b.
func decodeEntry(b []byte) (StoredEntry, error) {
	if len(b) < entryHeaderLen || b[0] != entryFormat {
		return StoredEntry{}, fmt.Errorf("%w: malformed stored entry (%d bytes)", ErrCorrupt, len(b))
	}
	e := StoredEntry{
		Version: binary.BigEndian.Uint64(b[1:]),
		Expiry:  int64(binary.BigEndian.Uint64(b[9:])),
		CRC:     binary.BigEndian.Uint32(b[17:]),
		Value:   b[entryHeaderLen:],
	}
	if Checksum(e.Value) != e.CRC {
		return StoredEntry{}, fmt.Errorf("%w: stored value fails its CRC32C", ErrCorrupt)
	}
	return e, nil
}
