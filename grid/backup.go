package grid

// restoreEntryOverhead is what an engine spends on one entry beyond its map
// name, key and value (key prefix, entry header, bookkeeping), rounded up.
const restoreEntryOverhead = 128

// expiryIndexOverhead is what the expiry index entry of a key with an
// expiry costs beyond its map name and key.
const expiryIndexOverhead = 128

// RestoreEntryCost is what one restored entry counts against a restore
// batch's budget: every engine write it makes, so an entry with an expiry
// (the data entry and its expiry index entry) counts twice its key.
func RestoreEntryCost(mapName string, key, value []byte, expiry int64) int {
	n := len(mapName) + len(key) + len(value) + restoreEntryOverhead
	if expiry != 0 {
		n += len(mapName) + len(key) + expiryIndexOverhead
	}
	return n
}

// MaxRestoreBatch is the largest budget one restore batch (one Raft entry)
// may use: as much as the largest single write, so that a restore never
// makes an entry the engines and the transport do not already handle.
func (l Limits) MaxRestoreBatch() int {
	return l.MaxValueBytes + 2*(l.MaxKeyBytes+MaxMapNameLen) + restoreEntryOverhead + expiryIndexOverhead
}
