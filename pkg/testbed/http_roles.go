package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// HTTP peers: a real net/http server and a keep-alive net/http client, for
// request/response benchmarks through a sidecar.
const (
	// ModeHTTPServer answers every GET with Size bytes (net/http).
	ModeHTTPServer = "http-server"
	// ModeHTTPClient makes Iterations GETs to http://Target/ over one
	// keep-alive connection (net/http), checking each body's Size.
	ModeHTTPClient = "http-client"
)

func init() {
	ServerModes[ModeHTTPServer] = httpServe
	ClientModes[ModeHTTPClient] = httpClient
}

func httpBody(size int) []byte {
	b := make([]byte, max(size, 1))
	Fill(b, 11, 0)
	return b
}

// httpServe serves HTTP/1.1 on one accepted connection until it closes.
func httpServe(spec PeerSpec, c *net.TCPConn) {
	body := httpBody(spec.Size)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Write(body)
		}),
		ReadHeaderTimeout: HazardDeadline(),
	}
	l := &oneConnListener{conn: c, done: make(chan struct{})}
	srv.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed || s == http.StateHijacked {
			l.close()
		}
	}
	srv.Serve(l)
}

// oneConnListener hands out one connection, then blocks until it closes.
type oneConnListener struct {
	conn net.Conn
	once sync.Once
	done chan struct{}
	used bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.used {
		l.used = true
		return l.conn, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) close()         { l.once.Do(func() { close(l.done) }) }
func (l *oneConnListener) Close() error   { l.close(); return nil }
func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

func httpClient(spec PeerSpec) (Result, error) {
	var dials int
	tr := &http.Transport{
		MaxIdleConnsPerHost: 1,
		DisableCompression:  true,
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			dials++
			return Dial(spec, 0)
		},
	}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: HazardDeadline()}
	want := httpBody(spec.Size)
	url := "http://" + spec.Target + "/"
	iters := max(spec.Iterations, 1)
	warm := iters / 10
	res := Result{Conns: 1, LatenciesNs: make([]int64, 0, iters)}
	buf := make([]byte, len(want))
	for i := 0; i < warm+iters; i++ {
		t := time.Now()
		resp, err := cl.Get(url)
		if err != nil {
			return res, err
		}
		_, err = io.ReadFull(resp.Body, buf)
		resp.Body.Close()
		if err != nil {
			return res, fmt.Errorf("read body: %w", err)
		}
		if i >= warm {
			res.LatenciesNs = append(res.LatenciesNs, time.Since(t).Nanoseconds())
		}
		if !bytes.Equal(buf, want) {
			return res, errors.New("response body differs from what the server sent")
		}
		res.BytesVerified += int64(len(buf))
	}
	if dials != 1 {
		return res, fmt.Errorf("%d connections for %d requests: keep-alive did not hold", dials, warm+iters)
	}
	return res, nil
}
