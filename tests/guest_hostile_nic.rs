//! Hostile-use tests of the NIC drivers in the QEMU guest (real VFIO).
