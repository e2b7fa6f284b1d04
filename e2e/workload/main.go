// Command workload is the mesh workload of sockhop's e2e tests and demo: an
// application server, a load-generating client and a transparent sidecar proxy,
// one binary, one subcommand each.
//
//	workload proxy                       sidecar: 15001 outbound, 15006 inbound (run as uid 1337)
//	workload server [-rr :8080] [-stream :8081] [-seed N]
//	workload client -mode rr -target server:8080 -conns 8 -duration 10s -size 1024
//	workload client -mode stream -target server:8081 -conns 50 -bytes 8388608 -expect-seed N
//	workload sleep                       # wait for SIGTERM (a pod's main container for kubectl exec)
//	workload table BEFORE_RR AFTER_RR BEFORE_STREAM AFTER_STREAM   # side-by-side comparison
//
// The proxy forwards each intercepted connection to its SO_ORIGINAL_DST with plain
// read/write copies, as Envoy does in REDIRECT mode; inbound connections go out from
// 127.0.0.6, the address Istio's rules let through to the application. The client
// prints its result as one JSON object.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: workload proxy|server|client|sleep|table [flags]")
	}
	switch args[0] {
	case "proxy":
		return runProxy(args[1:])
	case "server":
		return runServer(args[1:])
	case "client":
		return runClient(args[1:])
	case "sleep":
		return runSleep()
	case "table":
		return runTable(args[1:])
	}
	return fmt.Errorf("unknown subcommand %q: want proxy, server or client", args[0])
}
