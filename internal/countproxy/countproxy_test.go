package countproxy

import (
	"io"
	"net"
	"testing"
	"time"
)

func TestProxyForwardsAndCounts(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		c, err := echo.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		c.Write(append(buf, buf...))
	}()

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := New(lis, echo.Addr().String(), time.Second)
	defer p.Close()

	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "hellohello" {
		t.Fatalf("read %q, want %q", got, "hellohello")
	}
	if up, down := p.Up.Load(), p.Down.Load(); up != 5 || down != 10 {
		t.Fatalf("counted up %d down %d, want 5 and 10", up, down)
	}
}

func TestProxyCloseEndsConnections(t *testing.T) {
	upstream, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer upstream.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := upstream.Accept(); err == nil {
			accepted <- c
		}
	}()

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := New(lis, upstream.Addr().String(), 0)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer (<-accepted).Close()

	p.Close()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read from a closed proxy's connection succeeded")
	}
}
