package bench

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Markdown renders the report as a Markdown table, one row per figure,
// with the counters that show which path ON and OFF rounds took.
func (r Report) Markdown() string {
	var b strings.Builder
	mode := "full"
	if r.Quick {
		mode = "quick"
	}
	fmt.Fprintf(&b, "Kernel %s, %d CPUs, load average %.2f before and %.2f after; %s run, %d rounds per mode, %s.\n\n",
		r.Machine.Kernel, r.Machine.CPUs, r.Machine.LoadBefore, r.Machine.LoadAfter, mode, r.Rounds,
		r.Duration.Round(1e9))
	b.WriteString("| case | metric | off | on | ratio | redirected on / off | passthrough on |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|---|\n")
	for _, c := range r.Cases {
		if c.Error != "" {
			fmt.Fprintf(&b, "| %s | error | | | | | %s |\n", c.ID, escape(c.Error))
			continue
		}
		on, off := c.Sum(ModeOn), c.Sum(ModeOff)
		for i, m := range c.Metrics {
			redir, pass := "", ""
			if i == 0 {
				redir = bytesText(on.RedirectedBytes) + " / " + bytesText(off.RedirectedBytes)
				pass = reasonsText(on.Passthrough)
			}
			ratio := fmt.Sprintf("%.2f×", m.Ratio)
			if len(m.PairRatios) > 1 {
				ratio += fmt.Sprintf(" (%.2f–%.2f)", slices.Min(m.PairRatios), slices.Max(m.PairRatios))
			}
			fmt.Fprintf(&b, "| %s | %s (%s) | %s | %s | %s | %s | %s |\n",
				c.ID, m.Name, m.Unit, number(m.Off), number(m.On), ratio, redir, pass)
		}
	}
	b.WriteString("\nRatio: how many times better ON is (off/on for latency, on/off for throughput and rate). " +
		"For p50, throughput and rate it is the median of the ratios of off/on rounds run back to back " +
		"(their range in brackets); off and on are the pooled p50 and p99 of all rounds, or the median round.\n")
	return b.String()
}

func number(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 100:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func bytesText(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func reasonsText(m map[string]uint64) string {
	if len(m) == 0 {
		return "–"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func escape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}
