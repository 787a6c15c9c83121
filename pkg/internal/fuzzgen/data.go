// Package fuzzgen turns the bytes of a Go fuzz input into random but
// structured Services, EndpointSlices, a Node and planner settings, for the
// fuzz tests of pkg/servicecache, pkg/ipvs and pkg/iptables. It is only
// imported by tests.
//
// Every byte is one choice, and the first option of each choice is the
// ordinary one, so that any input decodes (past its end every choice is 0)
// and the fuzzer's mutations of a few bytes change one field at a time.
package fuzzgen

import "math/rand/v2"

// Data hands out the choices encoded in a fuzz input.
type Data struct {
	b []byte
	i int
}

// NewData reads choices from b.
func NewData(b []byte) *Data { return &Data{b: b} }

// Byte returns the next byte, 0 past the end.
func (d *Data) Byte() byte {
	if d.i >= len(d.b) {
		return 0
	}
	c := d.b[d.i]
	d.i++
	return c
}

// Intn returns a value in [0, n); 0 when n <= 1.
func (d *Data) Intn(n int) int {
	switch {
	case n <= 1:
		return 0
	case n <= 256:
		return int(d.Byte()) % n
	case n <= 1<<16:
		return int(d.Uint16()) % n
	}
	return int(d.Uint32()) % n
}

// Bool is a fair coin.
func (d *Data) Bool() bool { return d.Byte()&1 == 1 }

// OneIn is true about once in n choices, and false past the end.
func (d *Data) OneIn(n int) bool { return n > 0 && int(d.Byte())%n == n-1 }

// Uint16 reads two bytes.
func (d *Data) Uint16() uint16 { return uint16(d.Byte())<<8 | uint16(d.Byte()) }

// Uint32 reads four bytes.
func (d *Data) Uint32() uint32 { return uint32(d.Uint16())<<16 | uint32(d.Uint16()) }

// Int32 reads four bytes.
func (d *Data) Int32() int32 { return int32(d.Uint32()) }

// Bytes reads n bytes (zeros past the end).
func (d *Data) Bytes(n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = d.Byte()
	}
	return out
}

// Pick returns one of xs (the first past the end).
func Pick[T any](d *Data, xs ...T) T { return xs[d.Intn(len(xs))] }

// Ptr returns nil or a pointer to one of xs: nil is the first option.
func Ptr[T any](d *Data, xs ...T) *T {
	i := d.Intn(len(xs) + 1)
	if i == 0 {
		return nil
	}
	v := xs[i-1]
	return &v
}

// PickOr returns one of xs or, as the last option, what rnd returns.
func PickOr[T any](d *Data, rnd func() T, xs ...T) T {
	if i := d.Intn(len(xs) + 1); i < len(xs) {
		return xs[i]
	}
	return rnd()
}

// PtrOr is Ptr with rnd's value as the last option.
func PtrOr[T any](d *Data, rnd func() T, xs ...T) *T {
	switch i := d.Intn(len(xs) + 2); {
	case i == 0:
		return nil
	case i <= len(xs):
		v := xs[i-1]
		return &v
	}
	v := rnd()
	return &v
}

// Seeds returns the seed corpus of the fuzz tests, from a fixed
// pseudo-random source. Most bytes of a seed are small, which picks the
// ordinary options and small counts, and the others are uniform; seeds
// range from empty to large and from tame to chaotic, so that together
// they use every generated feature (TestSeedsCoverFeatures in
// pkg/servicecache checks that). Each is cut to the bytes Generate reads.
// The last seed is all 0xff, which takes the last option of every choice.
func Seeds() [][]byte {
	var out [][]byte
	rng := rand.New(rand.NewPCG(20261127, 6))
	for i := range 64 {
		n := 16 << (i % 8)             // 16 to 2048 bytes
		chaos := []int{5, 15, 40}[i%3] // percent of uniform bytes
		b := make([]byte, n)
		for i := range b {
			if rng.IntN(100) < chaos {
				b[i] = byte(rng.Uint32())
			} else {
				b[i] = byte(rng.IntN(8))
			}
		}
		out = append(out, b[:Generate(b).Used()])
	}
	ff := make([]byte, 512)
	for i := range ff {
		ff[i] = 0xff
	}
	return append(out, ff[:Generate(ff).Used()])
}
