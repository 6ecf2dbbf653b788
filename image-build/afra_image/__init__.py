"""Tools around the appliance image that never run on a box: writing a card for one box
(flash), booting an image under qemu (qemu), and `make image-test` (imagetest)."""
