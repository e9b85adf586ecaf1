// Package query will hold compute shipped to data: the job model, built-in
// aggregates, filter expressions, Starlark user functions with limits, the
// planner and the executor (see DESIGN.md, "Compute shipped to data"). It is
// empty until that work lands; it may import grid and replication, never node.
package query
