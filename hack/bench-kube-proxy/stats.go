package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"sort"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// median returns the median of xs, or NaN for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

// ratio is a/b, or NaN when either is missing or b is zero.
func ratio(a, b float64) float64 {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return math.NaN()
	}
	return a / b
}

// families parses Prometheus text exposition.
func families(r io.Reader) (map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parsing metrics: %w", err)
	}
	return fams, nil
}

// histogram is a cumulative Prometheus histogram: upper bounds, the count
// at or below each, and the total count and sum.
type histogram struct {
	bounds []float64
	counts []float64
	count  float64
	sum    float64
}

// histogramOf sums the metric family's histograms (over every label set);
// a missing family is an empty histogram.
func histogramOf(fams map[string]*dto.MetricFamily, name string) histogram {
	var h histogram
	f, ok := fams[name]
	if !ok {
		return h
	}
	for _, m := range f.GetMetric() {
		mh := m.GetHistogram()
		if mh == nil {
			continue
		}
		h.count += float64(mh.GetSampleCount())
		h.sum += mh.GetSampleSum()
		for i, b := range mh.GetBucket() {
			if i >= len(h.bounds) {
				h.bounds = append(h.bounds, b.GetUpperBound())
				h.counts = append(h.counts, 0)
			}
			h.counts[i] += float64(b.GetCumulativeCount())
		}
	}
	return h
}

// sub is h minus an earlier reading of the same histogram: what was
// observed between the two.
func (h histogram) sub(before histogram) histogram {
	out := histogram{bounds: h.bounds, counts: slices.Clone(h.counts), count: h.count - before.count, sum: h.sum - before.sum}
	for i := range out.counts {
		if i < len(before.counts) {
			out.counts[i] -= before.counts[i]
		}
	}
	return out
}

// quantile estimates the q-quantile as Prometheus' histogram_quantile
// does: linear interpolation inside the bucket holding the rank. It is
// NaN for an empty histogram; a rank above the last finite bound reports
// that bound.
func (h histogram) quantile(q float64) float64 {
	if h.count == 0 || len(h.bounds) == 0 {
		return math.NaN()
	}
	rank := q * h.count
	lower, below := 0.0, 0.0
	for i, ub := range h.bounds {
		if h.counts[i] >= rank {
			if math.IsInf(ub, 1) {
				return lower
			}
			inBucket := h.counts[i] - below
			if inBucket == 0 {
				return ub
			}
			return lower + (ub-lower)*(rank-below)/inBucket
		}
		lower, below = ub, h.counts[i]
	}
	return lower
}
