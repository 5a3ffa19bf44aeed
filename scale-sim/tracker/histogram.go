package tracker

import (
	"math/bits"
	"time"
)

// subBits sets the histogram's precision: each power of two is split in
// 2^subBits buckets, so a quantile is off by less than 1%.
const subBits = 7

// Histogram counts durations in log-linear buckets of microseconds. The zero
// value is empty. It is not safe for concurrent use.
type Histogram struct {
	counts []uint64
	n      uint64
	max    int64
}

func bucketOf(us int64) int {
	v := uint64(max(us, 0))
	if v < 1<<subBits {
		return int(v)
	}
	e := bits.Len64(v) - subBits - 1
	return (e+1)<<subBits + int(v>>e) - 1<<subBits
}

// lowerBound returns the smallest value in bucket b.
func lowerBound(b int) int64 {
	if b < 1<<subBits {
		return int64(b)
	}
	e := b>>subBits - 1
	return int64((uint64(b&(1<<subBits-1)) + 1<<subBits) << e)
}

// Record adds one duration.
func (h *Histogram) Record(d time.Duration) {
	us := d.Microseconds()
	b := bucketOf(us)
	if b >= len(h.counts) {
		h.counts = append(h.counts, make([]uint64, b+1-len(h.counts))...)
	}
	h.counts[b]++
	h.n++
	h.max = max(h.max, us)
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	if len(o.counts) > len(h.counts) {
		h.counts = append(h.counts, make([]uint64, len(o.counts)-len(h.counts))...)
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// Count returns the number of durations recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Max returns the largest duration recorded.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) * time.Microsecond }

// Quantile returns the duration below which a fraction q of the recorded
// durations fall (the bucket's lower bound, never above Max).
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n-1)) + 1
	var seen uint64
	for b, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(lowerBound(b), h.max)) * time.Microsecond
		}
	}
	return h.Max()
}

// Buckets calls fn for every non-empty bucket, in ascending order, with
// its lower bound and count.
func (h *Histogram) Buckets(fn func(lower time.Duration, count uint64)) {
	for b, c := range h.counts {
		if c > 0 {
			fn(time.Duration(lowerBound(b))*time.Microsecond, c)
		}
	}
}
