package bench

import (
	"slices"
)

// percentile of sorted samples (nearest rank); 0 for none.
func percentile(sorted []int64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return float64(sorted[i])
}

func sortedCopy(s []int64) []int64 {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// median of round figures; 0 for none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	c := slices.Clone(v)
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// latencyMetric compares pooled samples (ns) at one percentile, in µs.
func latencyMetric(name string, p float64, off, on []int64) Metric {
	m := Metric{Name: name, Unit: "us", LowerIsBetter: true,
		Off: percentile(off, p) / 1e3, On: percentile(on, p) / 1e3}
	if m.On > 0 {
		m.Ratio = m.Off / m.On
	}
	return m
}

// rateMetric compares the medians of per-round rates.
func rateMetric(name, unit string, off, on []float64) Metric {
	m := Metric{Name: name, Unit: unit, Off: median(off), On: median(on)}
	if m.Off > 0 {
		m.Ratio = m.On / m.Off
	}
	return m
}

// pairRatios compares the rounds of each back-to-back pair (roundModes
// runs them as pairs): off/on when lower is better, on/off otherwise.
func pairRatios(rounds []Round, lowerIsBetter bool) []float64 {
	var rs []float64
	for i := 0; i+1 < len(rounds); i += 2 {
		off, on := rounds[i], rounds[i+1]
		if off.Mode == ModeOn {
			off, on = on, off
		}
		if off.Mode != ModeOff || on.Mode != ModeOn || off.Value <= 0 || on.Value <= 0 {
			continue
		}
		if lowerIsBetter {
			rs = append(rs, off.Value/on.Value)
		} else {
			rs = append(rs, on.Value/off.Value)
		}
	}
	return rs
}
