package grid

import (
	"bytes"
	"encoding/binary"

	"github.com/cespare/xxhash/v2"
)

// PartitionKey returns the part of key that decides its partition: the bytes
// inside the first non-empty {...}, or the whole key. Keys that share a hash
// tag ("user:{42}:cart", "user:{42}:profile") land in the same partition, so
// they can be changed together and processed together.
func PartitionKey(key []byte) []byte {
	open := bytes.IndexByte(key, '{')
	if open < 0 {
		return key
	}
	end := bytes.IndexByte(key[open+1:], '}')
	if end <= 0 { // no closing brace, or an empty tag "{}"
		return key
	}
	return key[open+1 : open+1+end]
}

// PartitionOf maps (map name, key) to a partition in [0, partitions).
// The map name is part of the hash so that maps spread independently.
func PartitionOf(mapName string, key []byte, partitions int) int {
	if partitions <= 0 {
		return 0
	}
	d := xxhash.New()
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(mapName)))
	_, _ = d.Write(n[:])
	_, _ = d.WriteString(mapName)
	_, _ = d.Write(PartitionKey(key))
	return int(d.Sum64() % uint64(partitions))
}
