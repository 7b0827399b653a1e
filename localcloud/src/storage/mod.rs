//! The storage plane: disks as sparse files on loop devices, NAS exports, the OSS (S3) endpoint.
