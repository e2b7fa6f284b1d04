package testbed

// Peer modes for the kTLS hazard: one end turns kernel TLS on (TCP_ULP
// "tls", then TLS_RX or TLS_TX) after some plain bytes, as a TLS library
// does once its handshake is over, and the other end does TLS itself; one
// TLS 1.2 record (AES-128-GCM, a key both peers know) then crosses, and the
// receiver checks that it reads its plaintext.

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// ModeTLSRecords (server) writes Size bytes in four writes StrandSettle
// apart (so that its client reads them and the direction switches to
// redirect), waits for one byte from the client, then writes one TLS
// record whose plaintext is ktlsPlaintext, and waits for the client to
// close.
const ModeTLSRecords = "tls-records"

// ModeKTLSSend (server) writes Size bytes as ModeTLSRecords does, waits
// for one byte from the client, then sets TCP_ULP "tls" and TLS_TX, and
// writes ktlsPlaintext, which kernel TLS seals into one record; where
// either was refused, it writes the record it sealed itself, as a program
// that does without kernel TLS. It prints what it saw (KTLSReport: the
// errnos, and Kernel).
const ModeKTLSSend = "ktls-send"

// ModeRecordRecv (client) reads Size bytes, tells the server to go on,
// and reads one record, which it opens itself (KTLSReport: Intact).
const ModeRecordRecv = "record-recv"

// ModeKTLSRecv (client) reads Size bytes with read(2), then sets TCP_ULP
// "tls" and TLS_RX; tells the server to go on; and reads the record: with
// kernel TLS, the plaintext as the kernel decrypted it; where TCP_ULP was
// refused, the record as it is, decrypted here, as a program that does
// without kernel TLS. It reports what it saw (KTLSReport).
const ModeKTLSRecv = "ktls-recv"

// KTLSReport is what a ModeKTLSRecv peer saw.
type KTLSReport struct {
	// ULPErrno: setsockopt(TCP_ULP, "tls") failed with it (0: accepted);
	// RxErrno: setsockopt(TLS_RX), or TLS_TX for ModeKTLSSend, did.
	ULPErrno int `json:"ulp_errno"`
	RxErrno  int `json:"rx_errno"`
	// Kernel: the record was read through kernel TLS.
	Kernel bool `json:"kernel"`
	// Intact: what was read is the record's plaintext; Got: its first
	// bytes otherwise.
	Intact bool   `json:"intact"`
	Got    []byte `json:"got,omitempty"`
	Error  string `json:"error,omitempty"`
}

const ktlsMarker = "sockhop-ktls "

// The record's key material (both peers), and its plaintext.
var (
	ktlsKey  = [16]byte{0x6b, 0x74, 0x6c, 0x73, 0x2d, 0x74, 0x65, 0x73, 0x74, 0x2d, 0x6b, 0x65, 0x79, 0x2d, 0x31, 0x36}
	ktlsSalt = [4]byte{1, 2, 3, 4}
	ktlsIV   = [8]byte{9, 8, 7, 6, 5, 4, 3, 2} // the record's explicit nonce
)

var ktlsPlaintext = bytes.Repeat([]byte("plaintext of a kTLS record. "), 128)[:3000]

// linux/tls.h, linux/tcp.h
const (
	solTLS            = 282
	tlsTX             = 1
	tlsRX             = 2
	tls12Version      = 0x0303
	tlsCipherAESGCM   = 51
	tcpULP            = 31
	tlsRecordAppData  = 23
	tlsRecordHeaderSz = 5
)

func init() {
	ServerModes[ModeTLSRecords] = tlsRecords
	ServerModes[ModeKTLSSend] = ktlsSend
	ClientModes[ModeKTLSRecv] = ktlsRecv
	ClientModes[ModeRecordRecv] = recordRecv
}

// ktlsRecord seals ktlsPlaintext as the first (sequence 0) application
// data record of a TLS 1.2 AES-128-GCM stream (RFC 5288).
func ktlsRecord() []byte {
	block, _ := aes.NewCipher(ktlsKey[:])
	gcm, _ := cipher.NewGCM(block)
	nonce := append(append([]byte{}, ktlsSalt[:]...), ktlsIV[:]...)
	n := len(ktlsPlaintext)
	aad := make([]byte, 13) // sequence 0, type, version, length
	aad[8], aad[9], aad[10] = tlsRecordAppData, 3, 3
	binary.BigEndian.PutUint16(aad[11:], uint16(n))
	body := append(append([]byte{}, ktlsIV[:]...), gcm.Seal(nil, nonce, ktlsPlaintext, aad)...)
	hdr := []byte{tlsRecordAppData, 3, 3, 0, 0}
	binary.BigEndian.PutUint16(hdr[3:], uint16(len(body)))
	return append(hdr, body...)
}

// ktlsOpen decrypts a record as ktlsRecord sealed it.
func ktlsOpen(rec []byte) ([]byte, error) {
	if len(rec) < tlsRecordHeaderSz+8 || rec[0] != tlsRecordAppData {
		return nil, errors.New("not a TLS application data record")
	}
	block, _ := aes.NewCipher(ktlsKey[:])
	gcm, _ := cipher.NewGCM(block)
	body := rec[tlsRecordHeaderSz:]
	nonce := append(append([]byte{}, ktlsSalt[:]...), body[:8]...)
	aad := make([]byte, 13)
	aad[8], aad[9], aad[10] = tlsRecordAppData, 3, 3
	binary.BigEndian.PutUint16(aad[11:], uint16(len(body)-8-gcm.Overhead()))
	return gcm.Open(nil, nonce, body[8:], aad)
}

func tlsRecords(spec PeerSpec, c *net.TCPConn) {
	c.SetDeadline(time.Now().Add(HazardDeadline()))
	buf := make([]byte, (spec.Size+3)/4)
	for i := 0; i < 4; i++ {
		if _, err := c.Write(buf); err != nil {
			return
		}
		time.Sleep(StrandSettle())
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		return
	}
	c.Write(ktlsRecord())
	io.Copy(io.Discard, c) // until the client closes
}

// ktlsOn sets TCP_ULP "tls" and the key for one direction (TLS_RX or
// TLS_TX), and says in rep whether kernel TLS took it.
func ktlsOn(fd, dir int, rep *KTLSReport) {
	if err := unix.SetsockoptString(fd, unix.SOL_TCP, tcpULP, "tls"); err != nil {
		rep.ULPErrno = errnoOf(err)
		return
	}
	info := make([]byte, 0, 40) // struct tls12_crypto_info_aes_gcm_128
	info = binary.NativeEndian.AppendUint16(info, tls12Version)
	info = binary.NativeEndian.AppendUint16(info, tlsCipherAESGCM)
	info = append(info, ktlsIV[:]...)
	info = append(info, ktlsKey[:]...)
	info = append(info, ktlsSalt[:]...)
	info = append(info, make([]byte, 8)...) // rec_seq 0
	if err := unix.SetsockoptString(fd, solTLS, dir, string(info)); err != nil {
		rep.RxErrno = errnoOf(err)
		return
	}
	rep.Kernel = true
}

func ktlsSend(spec PeerSpec, c *net.TCPConn) {
	var rep KTLSReport
	defer func() { printJSON(ktlsMarker, rep) }()
	c.SetDeadline(time.Now().Add(HazardDeadline()))
	buf := make([]byte, (spec.Size+3)/4)
	for i := 0; i < 4; i++ {
		if _, err := c.Write(buf); err != nil {
			rep.Error = err.Error()
			return
		}
		time.Sleep(StrandSettle())
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		rep.Error = err.Error()
		return
	}
	fd, err := blockingFD(c)
	if err != nil {
		rep.Error = err.Error()
		return
	}
	ktlsOn(fd, tlsTX, &rep)
	out := ktlsRecord()
	if rep.Kernel {
		out = ktlsPlaintext
	}
	if _, err := unix.Write(fd, out); err != nil {
		rep.Error = err.Error()
		return
	}
	io.Copy(io.Discard, onlyReader{c}) // until the client closes
}

func recordRecv(spec PeerSpec) (Result, error) {
	var rep KTLSReport
	res := Result{Conns: 1}
	defer func() { printJSON(ktlsMarker, rep) }()
	c, err := Dial(spec, 0)
	if err != nil {
		return res, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(HazardDeadline()))
	if _, err := io.ReadFull(c, make([]byte, spec.Size)); err != nil {
		rep.Error = fmt.Sprintf("read the plain bytes: %v", err)
		return res, nil
	}
	if _, err := c.Write([]byte{1}); err != nil {
		rep.Error = fmt.Sprintf("tell the server: %v", err)
		return res, nil
	}
	got := make([]byte, len(ktlsRecord()))
	n, _ := io.ReadFull(c, got)
	got = got[:n]
	plain, err := ktlsOpen(got)
	rep.Intact = err == nil && bytes.Equal(plain, ktlsPlaintext)
	if !rep.Intact {
		rep.Got = got[:min(len(got), 16)]
	}
	return res, nil
}

func ktlsRecv(spec PeerSpec) (Result, error) {
	var rep KTLSReport
	res := Result{Conns: 1}
	defer func() { printJSON(ktlsMarker, rep) }()
	fail := failWith(&res, &rep.Error)
	c, err := Dial(spec, 0)
	if err != nil {
		return res, err
	}
	defer c.Close()
	fd, err := blockingFD(c)
	if err != nil {
		return fail("descriptor: %v", err)
	}
	tv := unix.NsecToTimeval(HazardDeadline().Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	// The plain bytes, in reads of a quarter each at most: the receiver
	// is seen reading with recvmsg.
	buf := make([]byte, max((spec.Size+3)/4, 1))
	for left := spec.Size; left > 0; {
		n, err := unix.Read(fd, buf[:min(len(buf), left)])
		if err != nil || n == 0 {
			return fail("read the plain bytes: %d left, %v", left, err)
		}
		left -= n
	}
	ktlsOn(fd, tlsRX, &rep)
	if _, err := unix.Write(fd, []byte{1}); err != nil {
		return fail("tell the server: %v", err)
	}
	want := len(ktlsPlaintext)
	if !rep.Kernel {
		want = len(ktlsRecord())
	}
	got := make([]byte, 0, want)
	for len(got) < want {
		n, err := unix.Read(fd, buf[:min(len(buf), want-len(got))])
		if err != nil || n == 0 {
			break
		}
		got = append(got, buf[:n]...)
	}
	plain := got
	if !rep.Kernel {
		if plain, err = ktlsOpen(got); err != nil {
			plain = got
		}
	}
	rep.Intact = bytes.Equal(plain, ktlsPlaintext)
	if !rep.Intact {
		rep.Got = got[:min(len(got), 16)]
	}
	return res, nil
}

// KTLSRecv is the report a finished ModeKTLSRecv, ModeKTLSSend or
// ModeRecordRecv peer printed.
func KTLSRecv(p *Peer) (KTLSReport, error) {
	var rep KTLSReport
	if !markedJSON(p.Stderr(), ktlsMarker, &rep) {
		return rep, fmt.Errorf("kTLS receiver printed no report: %s", p.Stderr())
	}
	return rep, nil
}
