// Package store holds the encoded views every agent stream is served from.
//
// Each service's views (model.Views) are encoded once per group of nodes
// that share them, with a content-hash version, and kept with the revision
// at which they last changed. Services sit on a change log ordered by
// revision, so a stream that has synchronised its node up to revision r
// finds what changed for it by walking the log back from the newest entry
// to r: its cost follows the changes, not the cluster's size. A stream
// keeps no copy of its node's view: what its agent holds is implied by the
// revision it acknowledged.
//
// Caveats: deleted services stay on the log as tombstones until every
// subscribed stream has synchronised past them. A stream of a node whose
// zone changed is told to resynchronise in full (Delta.Full).
package store
