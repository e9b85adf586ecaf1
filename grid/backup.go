package grid

// restoreEntryOverhead is what an engine spends on one entry beyond its map
// name, key and value (key prefix, entry header, bookkeeping), rounded up.
const restoreEntryOverhead = 128

// RestoreEntryCost is what one restored entry counts against a restore
// batch's budget.
func RestoreEntryCost(mapName string, key, value []byte) int {
	return len(mapName) + len(key) + len(value) + restoreEntryOverhead
}

// MaxRestoreBatch is the largest budget one restore batch (one Raft entry)
// may use: as much as the largest single write, so that a restore never
// makes an entry the engines and the transport do not already handle.
func (l Limits) MaxRestoreBatch() int {
	return l.MaxValueBytes + l.MaxKeyBytes + MaxMapNameLen + restoreEntryOverhead
}
