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
// Views are bounded: a service with a view larger than Options.MaxViewBytes
// (at most spokev1.MaxViewBytes, so that any response carrying it fits an
// agent's receive limit) is held back whole, logged, counted in
// spoke_controlplane_views_rejected_total and listed by Rejected. Agents
// keep the version they last received, if any, and get the service again
// once it is back within the limit.
//
// Caveats: deleted services stay on the log as tombstones until every
// subscribed stream has synchronised past them. A stream of a node whose
// zone changed is told to resynchronise in full (Delta.Full).
package store
