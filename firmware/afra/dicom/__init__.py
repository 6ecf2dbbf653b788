"""DICOM: the receive path (SCP), the durable spool, and the PACS client (SCU)."""
