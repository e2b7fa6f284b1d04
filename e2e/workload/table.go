package main

import (
	"encoding/json"
	"fmt"
	"os"
)

// runTable prints two client results side by side:
//
//	workload table BEFORE_RR.json AFTER_RR.json BEFORE_STREAM.json AFTER_STREAM.json
func runTable(args []string) error {
	if len(args) != 4 {
		return fmt.Errorf("usage: workload table BEFORE_RR AFTER_RR BEFORE_STREAM AFTER_STREAM")
	}
	var r [4]Result
	for i, f := range args {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &r[i]); err != nil {
			return fmt.Errorf("parse %s: %w", f, err)
		}
	}
	rows := []struct {
		name          string
		before, after float64
		lowerIsBetter bool
	}{
		{"request latency p50 (µs)", r[0].P50Us, r[1].P50Us, true},
		{"request latency p99 (µs)", r[0].P99Us, r[1].P99Us, true},
		{"requests per second", r[0].RPS, r[1].RPS, false},
		{"stream throughput (MB/s)", r[2].MBps, r[3].MBps, false},
	}
	fmt.Printf("%-28s %12s %12s %10s\n", "", "before", "after", "after/before")
	for _, row := range rows {
		ratio := "-"
		if row.before > 0 {
			ratio = fmt.Sprintf("%.2fx", row.after/row.before)
		}
		fmt.Printf("%-28s %12.1f %12.1f %10s\n", row.name, row.before, row.after, ratio)
	}
	fmt.Printf("(request/response: %d connections, %d-byte requests and responses; streams: %d connections, every byte checked: %d errors before, %d after)\n",
		r[0].Conns, r[0].Size, r[2].Conns, len(r[2].Errors)+len(r[0].Errors), len(r[3].Errors)+len(r[1].Errors))
	return nil
}
