package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Result is what the client prints, as one JSON object.
type Result struct {
	Mode  string `json:"mode"`
	Conns int    `json:"conns"`
	// rr: completed request/response round trips and their latency.
	Size     int     `json:"size,omitempty"`
	Requests int64   `json:"requests,omitempty"`
	P50Us    float64 `json:"p50_us,omitempty"`
	P99Us    float64 `json:"p99_us,omitempty"`
	RPS      float64 `json:"rps,omitempty"`
	// Bytes moved by the application in both directions, per second.
	MBps float64 `json:"mb_per_s"`
	// stream: bytes sent, and received and checked, over all connections.
	BytesSent     int64    `json:"bytes_sent"`
	BytesVerified int64    `json:"bytes_verified"`
	Resets        int      `json:"resets"`
	Errors        []string `json:"errors,omitempty"`
	ElapsedS      float64  `json:"elapsed_s"`
}

func runClient(args []string) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	mode := fs.String("mode", "rr", "rr (request/response latency and throughput) or stream (checksummed full-duplex streams)")
	target := fs.String("target", "", "server address host:port (required)")
	conns := fs.Int("conns", 4, "connections, all at once")
	duration := fs.Duration("duration", 10*time.Second, "rr: how long to send requests")
	warmup := fs.Duration("warmup", time.Second, "rr: requests before this are not measured")
	size := fs.Int("size", 1024, "rr: request and response size in bytes")
	bytes := fs.Int64("bytes", 8<<20, "stream: bytes per connection and direction")
	maxWrite := fs.Int("max-write", 64<<10, "stream: largest write; sizes are drawn log-uniformly up to it")
	rate := fs.Int64("rate", 0, "stream: bytes per second each connection sends (0: as fast as possible)")
	expectSeed := fs.Uint64("expect-seed", 0, "stream: the server's -seed")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *target == "" {
		return errors.New("-target is required")
	}
	var res Result
	switch *mode {
	case "rr":
		res = requestResponse(*target, *conns, *duration, *warmup, *size)
	case "stream":
		res = streams(*target, *conns, *bytes, *maxWrite, *rate, *expectSeed)
	default:
		return fmt.Errorf("unknown mode %q", *mode)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return err
	}
	if len(res.Errors) > 0 {
		return fmt.Errorf("%d errors, first: %s", len(res.Errors), res.Errors[0])
	}
	return nil
}

func requestResponse(target string, conns int, duration, warmup time.Duration, size int) Result {
	res := Result{Mode: "rr", Conns: conns, Size: size}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		lats []time.Duration
	)
	start := time.Now()
	measureFrom, end := start.Add(warmup), start.Add(warmup+duration)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine, err := rrConn(target, size, measureFrom, end)
			mu.Lock()
			defer mu.Unlock()
			lats = append(lats, mine...)
			if err != nil {
				res.Errors = append(res.Errors, fmt.Sprintf("conn %d: %v", i, err))
				if errors.Is(err, syscall.ECONNRESET) {
					res.Resets++
				}
			}
		}()
	}
	wg.Wait()
	slices.Sort(lats)
	res.Requests = int64(len(lats))
	res.ElapsedS = duration.Seconds()
	if len(lats) > 0 {
		res.P50Us = float64(lats[len(lats)/2].Nanoseconds()) / 1e3
		res.P99Us = float64(lats[len(lats)*99/100].Nanoseconds()) / 1e3
		res.RPS = float64(len(lats)) / duration.Seconds()
		res.MBps = res.RPS * float64(2*size) / 1e6
	}
	return res
}

// rrConn sends requests on one connection until end and returns the latencies of
// those that started after measureFrom.
func rrConn(target string, size int, measureFrom, end time.Time) ([]time.Duration, error) {
	c, err := net.DialTimeout("tcp4", target, 10*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	msg := make([]byte, 8+size)
	binary.LittleEndian.PutUint32(msg[0:], uint32(size))
	binary.LittleEndian.PutUint32(msg[4:], uint32(size))
	resp := make([]byte, size)
	var lats []time.Duration
	for {
		t := time.Now()
		if t.After(end) {
			return lats, nil
		}
		if _, err := c.Write(msg); err != nil {
			return lats, err
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return lats, err
		}
		if t.After(measureFrom) {
			lats = append(lats, time.Since(t))
		}
	}
}

func streams(target string, conns int, length int64, maxWrite int, rate int64, expectSeed uint64) Result {
	res := Result{Mode: "stream", Conns: conns}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	start := time.Now()
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sent, verified, err := streamOne(target, length, maxWrite, rate, expectSeed)
			mu.Lock()
			defer mu.Unlock()
			res.BytesSent += sent
			res.BytesVerified += verified
			if err != nil {
				res.Errors = append(res.Errors, fmt.Sprintf("conn %d: %v", i, err))
				if errors.Is(err, syscall.ECONNRESET) {
					res.Resets++
				}
			}
		}()
	}
	wg.Wait()
	res.ElapsedS = time.Since(start).Seconds()
	res.MBps = float64(res.BytesSent+res.BytesVerified) / res.ElapsedS / 1e6
	return res
}

func streamOne(target string, length int64, maxWrite int, rate int64, expectSeed uint64) (int64, int64, error) {
	nc, err := net.DialTimeout("tcp4", target, 10*time.Second)
	if err != nil {
		return 0, 0, err
	}
	c := nc.(*net.TCPConn)
	defer c.Close()
	seed := rand.Uint64()
	hdr := streamHeader{Magic: streamMagic, MaxWrite: uint32(maxWrite), Seed: seed, Length: length}
	if err := binary.Write(c, binary.LittleEndian, hdr); err != nil {
		return 0, 0, err
	}
	return exchange(c, seed, seed^expectSeed, length, maxWrite, rate)
}

// pacedWriter keeps the bytes written at or below a rate, so that a stream lasts
// long enough to live through what a test does meanwhile.
type pacedWriter struct {
	w       io.Writer
	rate    int64
	start   time.Time
	written int64
}

func newPacedWriter(w io.Writer, bytesPerSec int64) *pacedWriter {
	return &pacedWriter{w: w, rate: bytesPerSec, start: time.Now()}
}

func (p *pacedWriter) Write(b []byte) (int, error) {
	due := p.start.Add(time.Duration(float64(p.written) / float64(p.rate) * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		time.Sleep(d)
	}
	n, err := p.w.Write(b)
	p.written += int64(n)
	return n, err
}
