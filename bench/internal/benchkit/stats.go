package benchkit

import (
	"math"
	"slices"
)

// Median of v (unsorted; v is not modified).
func Median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return Pct(s, 0.5)
}

// Min of v, 0 when empty.
func Min(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	return slices.Min(v)
}

// Pct reads quantile q of sorted v by nearest rank: the median of 5 is
// the 3rd, the p99 of 600 the 594th, the p999 of 200,000 the 199,800th.
func Pct(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(v)))) - 1
	return v[max(0, min(i, len(v)-1))]
}
