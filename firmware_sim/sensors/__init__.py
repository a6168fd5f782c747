"""Sensors of the virtual appliances: temperature probes, RFID readers, fabric care, faults."""
