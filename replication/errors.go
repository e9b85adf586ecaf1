package replication

import (
	"errors"
	"hash/crc32"
)

var (
	// ErrCorrupt reports stored data that fails its checksum or framing.
	ErrCorrupt = errors.New("replication: corrupt data")
	// ErrGroupExists is returned when a group is opened twice.
	ErrGroupExists = errors.New("replication: group already open")
	// ErrNoGroup is returned for a group this host does not run.
	ErrNoGroup = errors.New("replication: group not open on this host")
	// ErrBadSnapshot reports a snapshot stream that fails its checks.
	ErrBadSnapshot = errors.New("replication: bad snapshot")
	// ErrQuarantined is returned by OpenGroup for a replica marked corrupt:
	// it waits to be rebuilt (dropped with RemoveGroup, then re-added).
	ErrQuarantined = errors.New("replication: replica quarantined")
	// ErrHostClosed is returned after Close.
	ErrHostClosed = errors.New("replication: host closed")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the CRC32C (Castagnoli) used for values end to end.
func Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }
